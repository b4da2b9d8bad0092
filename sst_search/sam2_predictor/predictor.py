"""SAM 2's video predictor fed from memory instead of a folder of JPEGs.

``SAM2VideoPredictor.init_state`` only accepts a video path. SST builds pseudo-videos out
of specimen photos that are already in memory, reuses the support's features across
thousands of queries and encodes queries in batches, so this module adds exactly that to
the official predictor and nothing else: a state built from :class:`~.frames.EncodedFrame`
objects whose image features were computed up front, batched, by
:func:`~.frames.encode_images`. Its methods read and write SAM 2's inference state;
:class:`~.session.TrackingSession` is their only caller.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sam2.modeling.position_encoding import apply_rotary_enc
from sam2.modeling.sam.transformer import RoPEAttention
from sam2.sam2_video_predictor import SAM2VideoPredictor
from sam2.utils.misc import fill_holes_in_mask_scores

from .frames import EncodedFrame, backbone_tokens, resize_masks

#: The SAM 2 submodules that run after the image features: what may change (an adapter)
#: without re-encoding a single image.
ADAPTABLE_MODULES = ("memory_attention", "sam_mask_decoder")
#: Parameters inside those modules that ``forward_image`` applies: they are part of the
#: image features SST encodes once and caches.
IMAGE_FEATURE_PARAMETERS = ("sam_mask_decoder.conv_s0.", "sam_mask_decoder.conv_s1.")


@dataclass
class SupportMemory:
    """What memory attention reads from the supports alone, for one batch of objects.

    In pairwise mode every query attends to the same support memory, so its per-layer key
    and value projections (keys RoPE-rotated) are computed once per session, not per query.
    """

    num_objects: int
    keys: list[torch.Tensor]  # per layer (num_objects, heads, tokens, head_dim)
    values: list[torch.Tensor]
    freqs_cis: list[torch.Tensor | None]  # per layer: the query tokens' RoPE, None without RoPE

    def per_layer(self, layer: int, num_queries: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``layer`` for ``num_queries`` queries, query-major like the batch."""
        k, v = self.keys[layer], self.values[layer]
        return (k, v) if num_queries == 1 else (k.repeat(num_queries, 1, 1, 1), v.repeat(num_queries, 1, 1, 1))


@dataclass
class TrackedBatch:
    """Low-res logits ``(B, 1, h, w)``, object score logits ``(B,)`` and the predicted IoU of each
    chosen mask ``(B,)`` for a batch of objects (queries-major when several queries)."""

    logits: torch.Tensor
    object_score: torch.Tensor
    predicted_iou: torch.Tensor


class _MemoryCaptured(Exception):
    """Stops SAM 2's memory preparation once the memory it would attend to is known."""

    def __init__(self, memory: torch.Tensor, memory_pos: torch.Tensor, num_obj_ptr_tokens: int):
        super().__init__()
        self.memory, self.memory_pos, self.num_obj_ptr_tokens = memory, memory_pos, num_obj_ptr_tokens


#: The predicted IoUs of the last mask-decoder call, per thread, so a model shared by threads
#: never hands one thread another's scores.
_LAST_IOUS = threading.local()


class InMemoryVideoPredictor(SAM2VideoPredictor):
    """The official video predictor, with states built from pre-encoded frames."""

    #: Memory format of the image encoder's convolutions and of the batches fed to it.
    encoder_memory_format: torch.memory_format = torch.contiguous_format

    def set_encoder_memory_format(self, memory_format: torch.memory_format) -> None:
        """Lay out the convolutions of ``forward_image`` (Hiera's patch embedding, the FPN
        neck, the decoder's high-resolution projections) in ``memory_format``; input batches
        follow. Hiera itself works on channels-last tokens, so ``torch.channels_last``
        saves layout copies at the convolutions without changing the arithmetic."""
        for name in ("image_encoder", *(prefix.rstrip(".") for prefix in IMAGE_FEATURE_PARAMETERS)):
            self.get_submodule(name).to(memory_format=memory_format)
        self.encoder_memory_format = memory_format

    def init_state_from_frames(self, frames: list[EncodedFrame | None]) -> dict:
        """A predictor state over ``frames``; ``None`` marks a slot filled later by
        :meth:`set_frame` (the query slot of a pairwise session)."""
        state: dict = {
            "images": _FrameImages(frames),
            "num_frames": len(frames),
            "offload_video_to_cpu": False,
            "offload_state_to_cpu": False,
            # Outputs stay at model resolution; callers resize to each frame's own size.
            "video_height": self.image_size,
            "video_width": self.image_size,
            "device": self.device,
            "storage_device": self.device,
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            "cached_features": {},
            "constants": {},
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
        }
        for idx, frame in enumerate(frames):
            if frame is not None:
                self.set_frame(state, idx, frame)
        return state

    @staticmethod
    def set_frame(state: dict, frame_idx: int, frame: EncodedFrame) -> None:
        state["images"].frames[frame_idx] = frame
        state["cached_features"][frame_idx] = (frame.image, frame.backbone)

    @staticmethod
    def drop_frame(state: dict, frame_idx: int) -> None:
        """Forget a frame's pixels and features once its memory has been encoded."""
        state["images"].frames[frame_idx] = None
        state["cached_features"].pop(frame_idx, None)

    def add_new_masks(self, state: dict, frame_idx: int, obj_ids: list[int], masks: np.ndarray) -> None:
        """``add_new_mask`` for several objects of one unseen frame, memory included, so
        ``propagate_in_video_preflight`` only files the outputs: bit for bit what the
        official predictor computes, one object at a time. (As one batch it measured no
        faster on CPU and differs in the last bits.)

        Per object the official method also merges every object's output at video
        resolution for its return value (quadratic in the number of traits); SST never reads
        it, and skipping it more than halves a session's set-up at 8 traits. ``masks`` are
        boolean ``(len(obj_ids), H, W)``.
        """
        indices = [self._obj_id_to_idx(state, oid) for oid in obj_ids]
        s = self.image_size
        m = resize_masks(masks, s, self.device)
        for j, idx in enumerate(indices):
            if frame_idx in state["frames_tracked_per_obj"][idx]:
                raise ValueError(f"object {obj_ids[j]} was already tracked through frame {frame_idx}")
            state["mask_inputs_per_obj"][idx][frame_idx] = m[j : j + 1]
            state["point_inputs_per_obj"][idx].pop(frame_idx, None)
            out, _ = self._run_single_frame_inference(
                inference_state=state,
                output_dict=state["output_dict_per_obj"][idx],
                frame_idx=frame_idx,
                batch_size=1,
                is_init_cond_frame=True,
                point_inputs=None,
                mask_inputs=m[j : j + 1],
                reverse=False,
                run_mem_encoder=False,
            )
            # As propagate_in_video_preflight encodes a conditioning frame's memory.
            high_res = F.interpolate(out["pred_masks"].to(self.device), size=(s, s), mode="bilinear", align_corners=False)
            out["maskmem_features"], out["maskmem_pos_enc"] = self._run_memory_encoder(
                state, frame_idx, 1, high_res, out["object_score_logits"], is_mask_from_pts=True
            )
            state["temp_output_dict_per_obj"][idx]["cond_frame_outputs"][frame_idx] = out

    def stack_object_outputs(self, state: dict, obj_indices: list[int]) -> dict:
        """One output dict for several objects, each frame's memories stacked along the
        batch dimension in ``obj_indices`` order: what SAM 2 attends to when the objects
        run as one batch. The objects must have outputs on the same frames."""
        per_obj = [state["output_dict_per_obj"][i] for i in obj_indices]
        stacked: dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        for key, frames in stacked.items():
            if any(set(o[key]) != set(per_obj[0][key]) for o in per_obj):
                raise ValueError(f"objects {obj_indices} have {key} on different frames; they cannot share a batch")
            for t in per_obj[0][key]:
                frames[t] = _stack_outputs([o[key][t] for o in per_obj])
        return stacked

    def track_objects(
        self, state: dict, output_dict: dict, frame_idx: int, num_objects: int, keep_memory: bool
    ) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """Track ``num_objects`` objects (memories stacked in ``output_dict``) into a
        non-conditioning frame in one pass of memory attention and the mask decoder.

        Returns SAM 2's compact output (memory when ``keep_memory``), the low-resolution
        mask logits ``(B, 1, h, w)`` and the decoder's predicted IoU of each chosen mask ``(B,)``.
        """
        out, pred = self._run_single_frame_inference(
            inference_state=state,
            output_dict=output_dict,
            frame_idx=frame_idx,
            batch_size=num_objects,
            is_init_cond_frame=False,
            point_inputs=None,
            mask_inputs=None,
            reverse=False,
            run_mem_encoder=keep_memory,
        )
        # With several candidate masks SAM 2 keeps the one with the highest predicted IoU.
        return out, pred, _LAST_IOUS.value.float().max(dim=-1).values

    def _forward_sam_heads(self, *args, **kwargs):
        outputs = super()._forward_sam_heads(*args, **kwargs)
        _LAST_IOUS.value = outputs[2]  # predicted IoU per candidate mask; SAM 2 drops it from its state
        return outputs

    def support_memory(self, state: dict, output_dict: dict, frame_idx: int, num_objects: int) -> SupportMemory:
        """The memory a frame at ``frame_idx`` attends to when ``output_dict`` holds only
        conditioning outputs, gathered by SAM 2 itself (which frames, temporal encodings,
        object pointers) and projected once for every layer of memory attention."""
        if output_dict["non_cond_frame_outputs"]:
            raise ValueError("support memory is fixed only while no tracked frame is kept as memory")
        ma = self.memory_attention
        assert ma.batch_first, "SAM 2.1 memory attention runs batch-first"
        side = self.sam_image_embedding_size
        me = threading.get_ident()

        def capture(_module, _args, kwargs):
            if threading.get_ident() == me:
                raise _MemoryCaptured(kwargs["memory"], kwargs["memory_pos"], kwargs["num_obj_ptr_tokens"])

        handle = ma.register_forward_pre_hook(capture, with_kwargs=True)
        try:
            self._prepare_memory_conditioned_features(
                frame_idx=frame_idx,
                is_init_cond_frame=False,
                current_vision_feats=[torch.zeros(1, num_objects, self.hidden_dim, device=self.device)],
                current_vision_pos_embeds=[torch.zeros(1, num_objects, self.hidden_dim, device=self.device)],
                feat_sizes=[(side, side)],
                output_dict=output_dict,
                num_frames=state["num_frames"],
            )
            raise RuntimeError("SAM 2 did not attend to memory")
        except _MemoryCaptured as captured:
            memory, memory_pos, num_ptr = captured.memory, captured.memory_pos, captured.num_obj_ptr_tokens
        finally:
            handle.remove()
        memory, memory_pos = memory.transpose(0, 1), memory_pos.transpose(0, 1)
        keys, values, freqs = [], [], []
        for layer in ma.layers:
            ca = layer.cross_attn_image
            k = ca._separate_heads(ca.k_proj(memory + memory_pos if layer.pos_enc_at_cross_attn_keys else memory), ca.num_heads)
            v = ca._separate_heads(ca.v_proj(memory), ca.num_heads)
            f = None
            if isinstance(ca, RoPEAttention):
                # As RoPEAttention.forward: the query tokens' RoPE, repeated over each memory frame.
                f = ca.compute_cis(end_x=math.sqrt(side * side), end_y=math.sqrt(side * side)).to(k.device)
                num_rope = k.size(-2) - num_ptr
                dummy_q = torch.zeros(1, ca.num_heads, side * side, k.size(-1), dtype=k.dtype, device=k.device)
                _, k[:, :, :num_rope] = apply_rotary_enc(dummy_q, k[:, :, :num_rope], f, repeat_freqs_k=ca.rope_k_repeat)
            keys.append(k)
            values.append(v)
            freqs.append(f)
        return SupportMemory(num_objects, keys, values, freqs)

    def track_from_support(self, memory: SupportMemory, frames: list[EncodedFrame]) -> TrackedBatch:
        """Track every object of ``memory`` into each of ``frames`` (never kept as memory):
        one pass of memory attention and the mask decoder over frames x objects.

        The same arithmetic as SAM 2's ``track_step`` on a non-conditioning frame, except
        that the query's tokens, identical for every object until the first cross-attention,
        go through the first self-attention once per frame instead of once per object.
        """
        ma, n = self.memory_attention, memory.num_objects
        backbone = {
            key: [torch.cat(levels) for levels in zip(*(f.backbone[key] for f in frames))]
            for key in ("backbone_fpn", "vision_pos_enc")
        }
        feats, pos_embeds, sizes = backbone_tokens(self, backbone)
        curr, curr_pos = feats[-1], pos_embeds[-1]
        out = curr + 0.1 * curr_pos if ma.pos_enc_at_input else curr
        out, pos = out.transpose(0, 1), curr_pos.transpose(0, 1)
        for i, layer in enumerate(ma.layers):
            out = layer._forward_sa(out, pos)
            ca = layer.cross_attn_image
            tgt2 = layer.norm2(out)
            q = ca._separate_heads(ca.q_proj(tgt2 + pos if layer.pos_enc_at_cross_attn_queries else tgt2), ca.num_heads)
            if memory.freqs_cis[i] is not None:
                q, _ = apply_rotary_enc(q, q[:, :, :0], memory.freqs_cis[i], repeat_freqs_k=ca.rope_k_repeat)
            if i == 0:  # from here on each object has its own tokens
                out, pos, q = (t.repeat_interleave(n, dim=0) for t in (out, pos, q))
            k, v = memory.per_layer(i, len(frames))
            attn = F.scaled_dot_product_attention(q, k, v)
            out = out + layer.dropout2(ca.out_proj(ca._recombine_heads(attn)))
            tgt2 = layer.norm3(out)
            out = out + layer.dropout3(layer.linear2(layer.dropout(layer.activation(layer.linear1(tgt2)))))
        h, w = sizes[-1]
        pix_feat = ma.norm(out).permute(0, 2, 1).view(out.size(0), self.hidden_dim, h, w)
        high_res = [
            x.permute(1, 2, 0).view(x.size(1), x.size(2), *s).repeat_interleave(n, dim=0)
            for x, s in zip(feats[:-1], sizes[:-1])
        ]
        _, _, ious, low_res, _, _, object_scores = self._forward_sam_heads(
            backbone_features=pix_feat,
            high_res_features=high_res,
            multimask_output=self._use_multimask(False, None),
        )
        if self.fill_hole_area > 0:
            low_res = fill_holes_in_mask_scores(low_res, self.fill_hole_area)
        return TrackedBatch(low_res.float(), object_scores.float().flatten(), ious.float().max(dim=-1).values)

    def _get_image_feature(self, inference_state, frame_idx, batch_size):
        if frame_idx not in inference_state["cached_features"]:
            raise RuntimeError(
                f"frame {frame_idx} has no encoded features; pseudo-video frames must be "
                "encoded with encode_images before tracking"
            )
        return super()._get_image_feature(inference_state, frame_idx, batch_size)


def _stack_outputs(outs: list[dict]) -> dict:
    def cat(key):
        return None if outs[0][key] is None else torch.cat([o[key] for o in outs])

    return {
        "maskmem_features": cat("maskmem_features"),
        "maskmem_pos_enc": [torch.cat(levels) for levels in zip(*(o["maskmem_pos_enc"] for o in outs))],
        "pred_masks": cat("pred_masks"),
        "obj_ptr": cat("obj_ptr"),
        "object_score_logits": cat("object_score_logits"),
    }


class _FrameImages:
    """Stands in for the predictor's ``images`` tensor; indexing returns a frame's pixels."""

    def __init__(self, frames: list[EncodedFrame | None]):
        self.frames = list(frames)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, idx: int) -> torch.Tensor:
        frame = self.frames[idx]
        if frame is None:
            raise RuntimeError(f"frame {idx} is not loaded")
        return frame.image[0]
