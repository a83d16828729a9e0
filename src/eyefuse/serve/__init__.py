"""Using a trained model: prediction for new patients (`predict`), Grad-CAM explanations per eye
(`explain`), ONNX export (`export`) and the web service (`app`).

Every entry point reads preprocessing settings, label names, thresholds and temperatures from the
checkpoint (or the ONNX sidecar), never from options, so inference always matches training.
"""
