"""Reduced-precision ONNX variants derived from the fp32 model.onnx: fp16 and int8, with the regions kept in fp32."""
