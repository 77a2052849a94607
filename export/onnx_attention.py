"""Attention of the exported graph as ONNX Runtime's fused `GroupQueryAttention` operator.

Exported op by op, attention over a past/present cache is a chain of Concat, Expand (every
key and value copied once per query head), MatMul, Where, Softmax and MatMul in every layer;
ONNX Runtime's contrib operator (domain `com.microsoft`, also run by onnxruntime-genai and
onnxruntime-web) does the same work in one kernel that reads the grouped keys in place and,
on sliding layers, only the last `sliding_window` of them.

The export reaches it through a PyTorch custom operator, `hslm::group_query_attention`, whose
eager implementation is the reference computation and whose translation emits the contrib
node. Its contract, as the operator's:

- query [B, T, heads * D], key / value [B, T, kv_heads * D] (after q/k norm and RoPE),
  past_key / past_value [B, kv_heads, capacity, D] whose first `total - T` columns are the
  past -> output [B, T, heads * D] and present_key / present_value;
- `bias` [B, 1, T, total] is added to the scores: 0 where a query may attend, the dtype's
  minimum elsewhere. Its last dimension says how many columns there are (`total`, past + new).
  It carries the padding of left-padded rows, which the operator's own `seqlens_k` (one length
  per row, padding assumed on the right) cannot express; the operator is told every column is
  real.
- `window` > 0 is the sliding window (a token and the window - 1 before it), -1 global.

Past and present can share one buffer. A past of exactly `total - T` columns gives a new
present of `total` columns. A past buffer of `capacity >= total` columns that is also bound as
the present output (the same memory) is updated in place: the new columns are written at
`total - T`, and nothing is copied. The in-place form is what makes decoding fast: a new
present per step copies the whole cache (1.1-1.5 ms per layer at 900 tokens of context,
against 0.2-0.3 in place, hindi-270m shapes on 2 threads).

ONNX Runtime refuses a batch of more than one row that brings several new tokens on top of a
past (chunked prefill of a batch); the prompt of a batch (empty past), decoding a batch, and
anything at batch size 1 run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hslm.model import PastKV

DOMAIN = "com.microsoft"
OP_NAME = "GroupQueryAttention"
# Positional inputs of the contrib operator; those hslm leaves empty are named for the schema.
OP_INPUTS = ("query", "key", "value", "past_key", "past_value", "seqlens_k",
             "total_sequence_length", "cos_cache", "sin_cache", "position_ids", "attention_bias")


@torch.library.custom_op("hslm::group_query_attention", mutates_args=())
def group_query_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          past_key: torch.Tensor, past_value: torch.Tensor, bias: torch.Tensor,
                          num_heads: int, kv_heads: int, scale: float, window: int
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, new, _ = query.shape
    past, head_dim = bias.shape[-1] - new, past_key.shape[3]

    def present(cached, columns):
        return torch.cat((cached[:, :, :past],
                          columns.view(batch, new, kv_heads, head_dim).transpose(1, 2)), 2)

    present_key, present_value = present(past_key, key), present(past_value, value)
    q = query.view(batch, new, num_heads, head_dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, present_key, present_value, attn_mask=bias,
                                         scale=scale, enable_gqa=num_heads != kv_heads)
    return out.transpose(1, 2).flatten(2), present_key, present_value


@group_query_attention.register_fake
def _(query, key, value, past_key, past_value, bias, num_heads, kv_heads, scale, window):
    shape = (*past_key.shape[:2], bias.shape[-1], past_key.shape[3])
    return query.new_empty(query.shape), past_key.new_empty(shape), past_value.new_empty(shape)


class FusedAttentionPastKV(PastKV):
    """A `PastKV` whose attention is one `hslm::group_query_attention` per layer, and whose
    past length is given (`past` buffers may be longer, see the module doc)."""

    def __init__(self, keys, values, length):
        super().__init__(keys, values)
        self.length = length

    def attend(self, layer, q, k, v, mask, scale, window):
        bias = torch.where(mask, 0.0, torch.finfo(q.dtype).min).to(q.dtype)
        out, self.keys[layer], self.values[layer] = group_query_attention(
            q.transpose(1, 2).flatten(2), k.transpose(1, 2).flatten(2),
            v.transpose(1, 2).flatten(2), self.keys[layer], self.values[layer], bias,
            q.shape[1], k.shape[1], scale, window or -1)
        return out


def _op_schema():
    """The contrib operator's signature, which the onnx package does not know (onnxscript needs
    one to emit a node); only the inputs and attributes hslm uses are typed."""
    from onnx.defs import OpSchema

    param, optional = OpSchema.FormalParameter, OpSchema.FormalParameterOption.Optional
    int_types = {"seqlens_k": "M", "total_sequence_length": "M", "position_ids": "P"}
    inputs = [param(name, int_types.get(name, "T"),
                    param_option=optional if index >= 3 else OpSchema.FormalParameterOption.Single)
              for index, name in enumerate(OP_INPUTS)]
    attribute = OpSchema.Attribute
    return OpSchema(
        OP_NAME, DOMAIN, 1, inputs=inputs,
        outputs=[param("output", "T"), param("present_key", "T"), param("present_value", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], ""),
                          ("M", ["tensor(int32)"], ""), ("P", ["tensor(int64)"], "")],
        attributes=[attribute("num_heads", OpSchema.AttrType.INT, ""),
                    attribute("kv_num_heads", OpSchema.AttrType.INT, ""),
                    attribute("scale", OpSchema.AttrType.FLOAT, "", required=False),
                    attribute("local_window_size", OpSchema.AttrType.INT, "", required=False)])


def translation_table() -> dict:
    """`custom_translation_table` for `torch.onnx.export`: the custom operator as the contrib
    node, with the lengths it wants computed from the bias's shape."""
    from onnx import TensorProto
    from onnxscript import opset20 as op
    from onnxscript.values import Op, Opset

    fused = Op(Opset(DOMAIN, 1), OP_NAME, _op_schema())

    def translate(query, key, value, past_key, past_value, bias, num_heads: int, kv_heads: int,
                  scale: float, window: int):
        total = op.Shape(bias, start=3, end=4)
        last_column = op.Sub(total, op.Constant(value_ints=[1]))
        seqlens_k = op.Cast(op.Expand(last_column, op.Shape(key, start=0, end=1)),
                            to=TensorProto.INT32)
        total_length = op.Cast(op.Squeeze(total), to=TensorProto.INT32)
        return fused(query, key, value, past_key, past_value, seqlens_k, total_length,
                     None, None, None, bias, num_heads=num_heads, kv_num_heads=kv_heads,
                     scale=scale, local_window_size=window)

    return {torch.ops.hslm.group_query_attention.default: translate}
