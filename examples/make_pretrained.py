"""Re-create examples/imu_basic_motions.onnx: the reference IMU model (DESIGN: Conv1D 6->8 k5,
MaxPool 2, Conv1D 8->16 k5, MaxPool 2, Conv1D 16->32 k3, global average pool, Dense 32->4),
pretrained in float32 on half of aeon's BasicMotions (the split `microtrain demo` keeps out of its
device data), exported as a plain NCHW ONNX graph like one a PyTorch user would bring.

    python examples/make_pretrained.py
"""

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from microtrain.convert import floatnet
from microtrain.cli.demo import PRETRAINED, demo_data


def export(net, path):
    nodes, inits = [], []
    h, w, c = net.input_shape
    cur = "input"
    for i, l in enumerate(net.layers):
        out = f"t{i}"
        if isinstance(l, floatnet.Conv):
            W = np.transpose(l.W, (0, 3, 1, 2)).astype(np.float32)        # OHWI -> OIHW
            inits += [numpy_helper.from_array(W, f"w{i}"), numpy_helper.from_array(l.b.astype(np.float32), f"b{i}")]
            pads = [l.pad_t, l.pad_l, l.pad_t, l.pad_l] if l.padding == "same" else [0, 0, 0, 0]
            nodes.append(helper.make_node("Conv", [cur, f"w{i}", f"b{i}"], [out + ("c" if l.relu else "")],
                                          kernel_shape=[l.k_h, l.k_w], strides=list(l.stride), pads=pads))
            if l.relu:
                nodes.append(helper.make_node("Relu", [out + "c"], [out]))
        elif isinstance(l, floatnet.MaxPool):
            nodes.append(helper.make_node("MaxPool", [cur], [out], kernel_shape=[l.k_h, l.k_w], strides=list(l.stride)))
        elif isinstance(l, floatnet.GlobalAvgPool):
            nodes.append(helper.make_node("GlobalAveragePool", [cur], [out + "g"]))
            nodes.append(helper.make_node("Flatten", [out + "g"], [out]))
        elif isinstance(l, floatnet.Dense):
            inits += [numpy_helper.from_array(l.W.astype(np.float32), f"w{i}"),
                      numpy_helper.from_array(l.b.astype(np.float32), f"b{i}")]
            nodes.append(helper.make_node("Gemm", [cur, f"w{i}", f"b{i}"], [out], transB=1))
        else:
            raise TypeError(type(l).__name__)
        cur = out
    nodes.append(helper.make_node("Softmax", [cur], ["probabilities"], axis=1))
    graph = helper.make_graph(nodes, "imu_basic_motions", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, c, h, w])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, net.layers[-1].out])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="microtrain")
    model.doc_string = "Reference IMU model pretrained on BasicMotions (aeon); classes Standing, Running, Walking, Badminton"
    onnx.checker.check_model(model)
    onnx.save(model, path)


def main():
    (Xp, yp), _, _, names = demo_data()
    net = floatnet.imu_reference_model(4, seed=0)
    net.fit(Xp, yp, epochs=100, lr=3e-3, seed=0)
    print("pretraining accuracy", net.accuracy(Xp, yp))
    export(net, PRETRAINED)
    print("wrote", PRETRAINED, os.path.getsize(PRETRAINED), "bytes")


if __name__ == "__main__":
    main()
