"""The GPU run's parts (``tools/gpu_check.py`` is the entry point): what travels, the steps, their runner."""
