"""``benchmarks/profile_step.py``: kernel categories and kinds from real kernel names (an H100
profile of 2026-12-07), and profiler annotations left out of the kernel time."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from mugv_dit_fixtures import load_benchmark

ELEMENTWISE = "torch elementwise/reduce/copy"
# (name as the profiler gives it, category, elementwise kind)
NAMES = [
    ("kernel_cutlass_kernel_flash_attncuteflash_bwd_sm90FlashAttentionBackwardSm90_object_at_",
     "attention", None),
    ("nvjet_sm90_tst_192x192_64x3_1x2_h_bz_coopB_NNN", "gemm", None),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous "
     "namespace)::FusedOptimizerTensorListMetadata<4>", "optimizer", None),
    ("void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::native"
     "::direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}", ELEMENTWISE,
     "copy / layout"),
    ("void at::native::vectorized_elementwise_kernel<8, at::native::bfloat16_copy_kernel_cuda("
     "at::TensorIteratorBase", ELEMENTWISE, "copy / layout"),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy_vectorized<at::native::("
     "anonymous namespace)::Opaq", ELEMENTWISE, "copy / layout"),
    ("void at::native::reduce_kernel<128, 4, at::native::ReduceOp<c10::BFloat16, at::native::"
     "func_wrapper_t<c10::BFl", ELEMENTWISE, "reduction"),
    ("void at::native::vectorized_elementwise_kernel<8, at::native::GeluBackwardCUDAKernelImpl("
     "at::TensorIteratorBas", ELEMENTWISE, "activation"),
    ("void at::native::vectorized_elementwise_kernel<8, at::native::FillFunctor<c10::BFloat16>, "
     "std::array<char*, 1u", ELEMENTWISE, "fill"),
    ("void at::native::(anonymous namespace)::layer_norm_grad_input_kernel_vectorized<float, "
     "float, false>(float con", ELEMENTWISE, "layer norm"),
    ("void at::native::unrolled_elementwise_kernel<at::native::CUDAFunctor_add<float>, std::"
     "array<char*, 3ul>, 4, Tr", ELEMENTWISE, "arithmetic"),
    ("Memcpy DtoD (Device -> Device)", "memcpy/memset", None),
    ("gated_bwd_kernel", "mugv_kernels (Triton)", None),
]  # fmt: skip


@pytest.fixture(scope="module")
def ps():
    return load_benchmark("profile_step")


@pytest.mark.parametrize(("name", "category", "kind"), NAMES, ids=[n[1] for n in NAMES])
def test_kernel_names_fall_into_their_category_and_kind(ps, name, category, kind):
    assert ps.categorize(name, {"gated_bwd_kernel"}) == category
    if kind is not None:
        assert ps.elementwise_kind(name) == kind


def test_profiler_annotations_are_not_kernel_time(ps):
    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    events = [
        SimpleNamespace(name="nvjet_sm90_gemm", device_type=cuda, is_user_annotation=False),
        SimpleNamespace(name="Optimizer.step#AdamW.step", device_type=cuda, is_user_annotation=True),
        SimpleNamespace(name="aten::mm", device_type=cpu, is_user_annotation=False),
        SimpleNamespace(name="old torch: no flag", device_type=cuda),
    ]  # fmt: skip
    kept = [e.name for e in ps.gpu_kernel_events(events)]
    assert kept == ["nvjet_sm90_gemm", "old torch: no flag"]
