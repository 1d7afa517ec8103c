"""Compile every Triton kernel of the package for Hopper (sm_90) on a machine without a GPU, and report what
each config costs: registers, spills, shared memory, the kind of MMA its matmuls use, and its atomics.

    python -m vlmo_fast.kernels.aot --dtypes bf16,fp16,fp32 --head-dims 16,32,34,64,128 --json FILE [--markdown F]

The launchers of the kernels run at VLMo-base shapes on meta tensors with every launch captured instead of
run; each captured launch is specialised as Triton's JIT specialises it (pointers and ints divisible by 16
marked, ints equal to 1 made constexpr) and compiled with `triton.compile` for GPUTarget("cuda", 90, 32),
once for every config its autotuner holds.  `kept` says whether the autotuner's pruning would let it run at
that shape.  Registers and spills come from the ptxas log (TRITON_DUMP_PTXAS_LOG), shared memory from the
compiled metadata, the MMA kind and the atomics from the PTX.  The command exits 0 whenever the report is
written: rule breaches are data, judged by tests/kernels/test_aot.py.  Importing this module does nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
from dataclasses import asdict, dataclass

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass
class Launch:
    """One captured kernel launch: the kernel object (an Autotuner or a JITFunction) and its arguments."""

    kernel: object
    args: tuple
    kwargs: dict


@dataclass
class Record:
    kernel: str
    variant: str
    config: str
    dtype: str
    head_dim: int | None
    regs: int
    spill_bytes: int
    smem_bytes: int
    mma: str
    matmul: bool
    atomics: int
    fenced_atomics: int
    kept: bool


@contextlib.contextmanager
def captured(kernels: list):
    """Launches of `kernels` are recorded, not run, inside the block."""
    launches: list[Launch] = []
    for k in kernels:
        k.run = (lambda k: lambda *args, grid=None, warmup=False, **kw: launches.append(Launch(k, args, kw)))(k)
    try:
        yield launches
    finally:
        for k in kernels:
            del k.run


def _kernel_objects(module) -> list:
    """The kernels a module defines (jit helpers it imports are not launched on their own)."""
    import triton

    def jit_fn(v):
        return v.fn if isinstance(v, triton.runtime.Autotuner) else v

    return [v for v in vars(module).values() if isinstance(v, (triton.runtime.Autotuner, triton.runtime.JITFunction))
            and jit_fn(v).fn.__module__ == module.__name__]


def _attention_launches(dtype, head_dim: int, with_bias: bool, image_len: int = 197) -> list[Launch]:
    """Forward and backward of packed attention at VLMo-base shapes (32 pairs, captions of 40, 224 px), the head
    dim stored at its aligned width as vlmo_fast/ops stores it (34 -> 64 columns, 34 real)."""
    import torch

    from . import attention, attention_bwd
    from .attention_tiles import Problem, block_d

    P, Lt = 32, 40
    H = 16 if head_dim == 34 else 12
    T = P * (Lt + image_len)
    meta = dict(device="meta", dtype=dtype)
    qkv = torch.empty(T, 3, H, block_d(head_dim), **meta)
    seg = (torch.arange(P, dtype=torch.int32, device="meta"),) * 5
    M = Lt + image_len
    bias = torch.empty(H, M, M, **meta) if with_bias else None
    problem = Problem(qkv, seg, Lt, image_len, bias, head_dim ** -0.5)
    kernels = _kernel_objects(attention) + _kernel_objects(attention_bwd)
    with captured(kernels) as launches:
        out, lse = attention.attention_fwd(problem)
        attention_bwd.attention_bwd(problem, out, out, lse)
    return launches


def _expert_ffn_launches(dtype) -> list[Launch]:
    """Forward and backward of the expert FFN at VLMo-base width: fp32 residual stream, GEMMs in `dtype`."""
    import torch

    from . import expert_ffn, expert_ffn_norm, expert_ffn_scale, grouped_gemm

    T, D, hidden = 32 * 237, 768, 3072
    x = torch.empty(T, D, device="meta", dtype=torch.float32 if dtype != torch.float32 else dtype)
    w = [torch.empty(*s, device="meta", dtype=dtype) for s in ((D,), (D,), (hidden, D), (hidden,), (D, hidden), (D,))]
    weights = w * 2
    groups = [0, 32 * 40, 0, 32 * 40, T, 1]
    gamma = torch.empty(D, device="meta", dtype=x.dtype)
    kernels = [k for m in (grouped_gemm, expert_ffn_norm, expert_ffn_scale) for k in _kernel_objects(m)]
    with captured(kernels) as launches:
        out, xn, mean, rstd, u, a, h = expert_ffn.ffn_forward(x, groups, weights, gamma, None, 1e-6, True)
        expert_ffn.ffn_backward(out, x, xn, mean, rstd, u, a, h, groups, weights, gamma, None)
    return launches


def _specialise(fn, bound: dict, target):
    """(signature, constexprs, attrs) as Triton's JIT builds them for these argument values."""
    from triton._C.libtriton import native_specialize_impl
    from triton.compiler import make_backend

    backend = make_backend(target)
    signature, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        value = bound[p.name]
        if p.is_constexpr:
            signature[p.name], constexprs[p.name] = "constexpr", value
            continue
        kind, spec = native_specialize_impl(type(backend), value, False, True, True)
        signature[p.name] = kind
        if kind == "constexpr":
            constexprs[p.name] = value
        elif isinstance(spec, str) and spec:
            attrs[(i,)] = backend.parse_attr(spec)
    return signature, constexprs, attrs


_PTXAS = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _compile(fn, bound: dict, num_warps: int, num_stages: int) -> dict:
    """Compile for sm_90 and read the resources; the ptxas log is what TRITON_DUMP_PTXAS_LOG prints."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", 90, 32)
    signature, constexprs, attrs = _specialise(fn, bound, target)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                  options={"num_warps": num_warps, "num_stages": num_stages})
    text = log.getvalue()
    regs = [int(m) for m in _PTXAS.findall(text)]
    spills = [int(a) + int(b) for a, b in _SPILL.findall(text)]
    ptx = compiled.asm["ptx"]
    atomics = [line for line in ptx.splitlines() if re.match(r"\s*(@%p\d+\s+)?(atom|red)\.", line)]
    mma = "wgmma" if "wgmma.mma_async" in ptx else ("mma.sync" if re.search(r"\bmma\.sync", ptx) else "none")
    return dict(regs=max(regs, default=0), spill_bytes=max(spills, default=0), smem_bytes=compiled.metadata.shared,
                mma=mma, matmul="tt.dot" in compiled.asm["ttir"], atomics=len(atomics),
                fenced_atomics=sum(bool(re.search(r"\.(acq_rel|acquire|release|sc)\b", a)) for a in atomics))


def _config_name(kwargs: dict, num_warps: int, num_stages: int) -> str:
    tiles = "x".join(str(kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_P", "BLOCK_K") if k in kwargs)
    return f"{tiles or '-'}/w{num_warps}/s{num_stages}"


def _records(launch: Launch, dtype_name: str, head_dim: int | None, seen: set, only: str = "") -> list[Record]:
    import triton

    kernel = launch.kernel
    fn = kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel
    name = f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"
    if only not in name:
        return []
    bound = dict(zip(fn.arg_names, launch.args)) | launch.kwargs
    variant = ",".join(f"{k}={v}" for k, v in launch.kwargs.items() if k not in ("HEAD_DIM", "BLOCK_D"))
    if isinstance(kernel, triton.runtime.Autotuner):
        kernel.nargs = dict(zip(fn.arg_names, launch.args))
        kept = kernel.prune_configs(launch.kwargs)
        choices = [(c, c in kept) for c in kernel.configs]
    else:
        num_warps = bound.pop("num_warps", 4)
        choices = [(triton.Config({}, num_warps=num_warps, num_stages=bound.pop("num_stages", 3)), True)]
    out = []
    for cfg, kept in choices:
        key = (name, variant, str(cfg), dtype_name, head_dim)
        if key in seen:
            continue
        seen.add(key)
        stats = _compile(fn, bound | cfg.kwargs, cfg.num_warps, cfg.num_stages)
        out.append(Record(name, variant, _config_name(cfg.kwargs, cfg.num_warps, cfg.num_stages), dtype_name,
                          head_dim, kept=kept, **stats))
    return out


def report_part(dtype_name: str, head_dim: int | None, only: str = "") -> list[Record]:
    """The records of one dtype: the FFN kernels (head_dim None) or attention at one head dim; `only` keeps the
    kernels whose name contains it."""
    import torch

    dtype = getattr(torch, DTYPES[dtype_name])
    if head_dim is None:
        launches = _expert_ffn_launches(dtype)
    else:
        launches = _attention_launches(dtype, head_dim, True) + _attention_launches(dtype, head_dim, False)
    records: list[Record] = []
    seen: set = set()
    for launch in launches:
        records += _records(launch, dtype_name, head_dim, seen, only)
    return records


def build_report(dtypes: list[str], head_dims: list[int], jobs: int = 1, progress=None,
                 only: str = "") -> list[Record]:
    """Every kernel, config, dtype and head dim (head_dim None for the FFN kernels), in `jobs` processes."""
    parts = [(d, hd) for d in dtypes for hd in [None, *head_dims]]
    if jobs <= 1:
        results = []
        for part in parts:
            results.append(report_part(*part, only))
            if progress:
                progress(part)
        return [r for rs in results for r in rs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(report_part, *part, only) for part in parts]
        results = []
        for part, future in zip(parts, futures):
            results.append(future.result())
            if progress:
                progress(part)
    return [r for rs in results for r in rs]


def markdown(records: list[Record]) -> str:
    import triton

    head = [f"# sm_90 resources of every kernel config (triton {triton.__version__}, compiled on a CPU)", "",
            "By `python -m vlmo_fast.kernels.aot` at VLMo-base shapes (attention: 32 pairs, text 40, image 197; FFN:",
            "D 768, fp32 residual). kept: the autotuner's pruning lets the config run there. Rules for kept",
            "bf16/fp16 configs: smem <= 232448 B, no spills, wgmma for matmuls; no fenced atomics anywhere.", ""]
    cols = ["kernel", "variant", "config", "dtype", "head_dim", "kept", "regs", "spill_bytes", "smem_bytes", "mma",
            "atomics", "fenced_atomics"]
    lines = head + ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in records:
        row = asdict(r)
        lines.append("| " + " | ".join(str(row[c]) if row[c] is not None else "-" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlmo_fast.kernels.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", default="bf16,fp16,fp32")
    parser.add_argument("--head-dims", default="16,32,34,64,128")
    parser.add_argument("--json", required=True, help="where the JSON list of records goes")
    parser.add_argument("--markdown", help="also write the table as markdown here")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiling processes")
    parser.add_argument("--only", default="", help="only the kernels whose module.name contains this")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1" or "vlmo_fast.kernels.attention" in sys.modules:
        parser.error("compile in a fresh process without TRITON_INTERPRET=1 (interpreted kernels cannot compile)")
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"  # a cached kernel would not print its ptxas log
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # what the JIT does (and Triton 3.6 always did)
    dtypes = [d for d in args.dtypes.split(",") if d]
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        parser.error(f"unknown dtypes {unknown}; choose from {sorted(DTYPES)}")
    head_dims = [int(h) for h in args.head_dims.split(",") if h]
    records = build_report(dtypes, head_dims, args.jobs, only=args.only,
                           progress=lambda part: print(f"compiled {part[0]} " + (f"attention, head dim {part[1]}"
                                                       if part[1] else "expert FFN"), file=sys.stderr, flush=True))
    with open(args.json, "w") as f:
        json.dump([asdict(r) for r in records], f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(records))
    print(f"{len(records)} records -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
