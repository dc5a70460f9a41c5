"""Conversion of the predict function to ONNX with tf2onnx.

tf2onnx 1.17 has no handlers for two ops that TensorFlow Probability emits:
`BroadcastArgs` (broadcasting the batch shape of `z` against the K mixture
components in `MultivariateNormalDiag.log_prob`) and `MulNoNan` (in
`Bernoulli.entropy`). The handlers below lower them to standard ONNX ops,
so the model's math stays in TFP.
"""

import json
import logging

import numpy as np
import onnx
import tf2onnx
from onnx import TensorProto

from dgc_tf.export import contract

_EINSUM_OPTIMIZER = "einsum_optimizer"


def convert_broadcast_args(ctx, node, name, args):
    """Replace a `BroadcastArgs(s0, s1)` node by ONNX ops computing the broadcast shape.

    The shorter shape vector is padded with leading ones to the rank of the
    longer one, then each dimension is taken from `s1` where `s0` is 1 and
    from `s0` elsewhere. Like TensorFlow's kernel, this assumes the shapes
    are compatible, which the consuming ops check at run time.

    The signature `(ctx, node, name, args)` is the one tf2onnx expects of
    functions passed in `custom_op_handlers`.
    """
    del name, args
    output_dtype = ctx.get_dtype(node.output[0])
    output_shapes, output_dtypes = node.output_shapes, node.output_dtypes
    shape_inputs = list(node.input)
    ctx.remove_node(node.name)

    one_constant = ctx.make_const(tf2onnx.utils.make_name(f"{node.name}_one"), np.array(1, np.int64)).output[0]
    ones_value = onnx.helper.make_tensor("value", TensorProto.INT64, [1], [1])
    shapes = [ctx.make_node("Cast", [shape], attr={"to": TensorProto.INT64}).output[0] for shape in shape_inputs]
    ranks = [ctx.make_node("Shape", [shape]).output[0] for shape in shapes]
    rank = ctx.make_node("Max", ranks).output[0]
    padded = []
    for shape, shape_rank in zip(shapes, ranks):
        missing = ctx.make_node("Sub", [rank, shape_rank]).output[0]
        leading_ones = ctx.make_node("ConstantOfShape", [missing], attr={"value": ones_value}).output[0]
        padded.append(ctx.make_node("Concat", [leading_ones, shape], attr={"axis": 0}).output[0])
    first_is_one = ctx.make_node("Equal", [padded[0], one_constant]).output[0]
    broadcast = ctx.make_node("Where", [first_is_one, padded[1], padded[0]]).output[0]
    ctx.make_node(
        "Cast",
        [broadcast],
        attr={"to": output_dtype},
        name=node.name,
        outputs=node.output,
        shapes=output_shapes,
        dtypes=output_dtypes,
    )


def convert_mul_no_nan(ctx, node, name, args):
    """Replace a `MulNoNan(x, y)` node by `Where(y == 0, 0, x * y)`.

    TensorFlow defines the result as 0 wherever `y` is 0, even where `x` is
    NaN or infinite.
    """
    del name, args
    output_shapes, output_dtypes = node.output_shapes, node.output_dtypes
    x, y = node.input
    ctx.remove_node(node.name)

    numpy_dtype = tf2onnx.utils.map_onnx_to_numpy_type(ctx.get_dtype(y))
    zero = ctx.make_const(tf2onnx.utils.make_name(f"{node.name}_zero"), np.array(0, numpy_dtype)).output[0]
    product = ctx.make_node("Mul", [x, y]).output[0]
    y_is_zero = ctx.make_node("Equal", [y, zero]).output[0]
    ctx.make_node(
        "Where",
        [y_is_zero, zero, product],
        name=node.name,
        outputs=node.output,
        shapes=output_shapes,
        dtypes=output_dtypes,
    )


CUSTOM_OP_HANDLERS = {
    "BroadcastArgs": (convert_broadcast_args, []),
    "MulNoNan": (convert_mul_no_nan, []),
}


class _SkipEinsumOptimizerWarning(logging.Filter):
    """Drop tf2onnx's warning that its optional Einsum optimizer skipped a node.

    The optimizer rejects equations with an ellipsis (`...d,kdh->...kh` in
    the response heads) and leaves the node as a plain ONNX Einsum, which
    ONNX Runtime runs. The warning comes with a traceback that looks like a
    failure.
    """

    def filter(self, record):
        return not (record.msg == "Failed to apply %s" and record.args == (_EINSUM_OPTIMIZER,))


def convert_predict_function(function, input_signature, opset=contract.ONNX_OPSET):
    """Convert the predict `tf.function` to an ONNX `ModelProto`.

    Args:
        function: a `tf.function` taking `x` and returning a dict of outputs.
        input_signature: its input signature, a list with one `tf.TensorSpec`
            named `x`.
        opset: the ONNX opset.

    Returns:
        The model. Its input and outputs carry the names of the SavedModel
        signature, the batch dimension is named `batch`.

    Raises:
        RuntimeError: if some TensorFlow op was left unconverted.
    """
    optimizer_logger = logging.getLogger("tf2onnx.optimizer")
    log_filter = _SkipEinsumOptimizerWarning()
    optimizer_logger.addFilter(log_filter)
    try:
        model_proto, _ = tf2onnx.convert.from_function(
            function,
            input_signature=input_signature,
            opset=opset,
            custom_op_handlers=dict(CUSTOM_OP_HANDLERS),
        )
    finally:
        optimizer_logger.removeFilter(log_filter)

    # from_function continues past ops it cannot convert and leaves them in
    # the graph under their TensorFlow names. Catching them here gives a
    # clearer error than ONNX Runtime's when it loads the file.
    unconverted = sorted(
        {node.op_type for node in model_proto.graph.node if not onnx.defs.has(node.op_type, node.domain)}
    )
    if unconverted:
        raise RuntimeError(
            f"tf2onnx {tf2onnx.__version__} left TensorFlow ops it cannot convert: {unconverted}. "
            "Export without ONNX (include_onnx=False) or add a handler to "
            "dgc_tf.export.onnx_conversion.CUSTOM_OP_HANDLERS."
        )
    _name_batch_dimension(model_proto)
    return model_proto


def _name_batch_dimension(model_proto):
    """Name the first dimension of every input and output `batch` (tf2onnx writes `unk__N`)."""
    for value in list(model_proto.graph.input) + list(model_proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"


def attach_metadata(model_proto, metadata):
    """Store each top-level metadata field as a JSON string in `metadata_props`.

    `json.loads(props[key]) == metadata[key]` for every key, so readers of
    the ONNX file get the facts of `dgc_model.json` without the JSON file.
    """
    onnx.helper.set_metadata_props(
        model_proto, {key: json.dumps(value, sort_keys=True) for key, value in metadata.items()}
    )
    model_proto.doc_string = (
        f"dgc-tf Deep Goal-Oriented Clustering model '{metadata['name']}', version {metadata['version']}: "
        "the predict function of the SavedModel's serving_default signature."
    )
    model_proto.model_version = int(metadata["version"])
