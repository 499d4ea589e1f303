"""The quantized model: QModel/QLayer (qmodel), the float -> fixed-point arithmetic the kernels
take (fixedpoint), and the model file that carries both to the board (modelfile)."""
