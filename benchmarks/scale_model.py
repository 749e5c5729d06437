#!/usr/bin/env python3
"""A model of a big build's time against the number of Ray nodes (docs/scale.md).

It adds up what a 70 B checkpoint (bf16, 140 GB) costs through each step of
``FROM`` + ``QUANTIZE`` (Q4_K_M, via ``CONVERT gguf``) or ``QUANTIZE float8_e4m3``, from per-task
costs measured on this project's 2-core machine (benchmarks/executor.py, benchmarks/fetch.py,
benchmarks/build.py) and from parameters for what a cluster has that the machine has not
(cores per node, shared-filesystem and registry bandwidth):

- hashing the input: sha256, one file per core of every node at once (a file is not split;
  ``-j`` set to the cluster's CPUs), and read through the shared filesystem;
- ``CONVERT gguf`` (Q4_K_M only): on the build's node, a streaming rewrite (read + write);
- the quantize or cast: the work items spread over every core of every node, at the
  measured per-core rate, and no faster than the shared filesystem moves their input and
  output; plus Ray's cost per item (measured) over the items (4 Mi elements each);
- the push: the output's bytes at the registry's bandwidth.

Everything is a plain sum of maxima: no overlap between steps is assumed, so the model errs
long. Stdlib only. Run:  python benchmarks/scale_model.py [--cores-per-node 32] [--fs-gbps 2.5] …
"""

from __future__ import annotations

import argparse

# measured on the 2-core VM (docs/benchmarks.md): per core, so that they scale with cores
Q4_K_M_MPARAMS_PER_CORE = 11.2  # benchmarks/executor.py: 1.05 GB float32 GGUF, local executor
FP8_MPARAMS_PER_CORE = 28.3  # benchmarks/executor.py: safetensors-cast bf16 -> float8_e4m3, local executor
SHA256_GBPS_PER_CORE = 1.72  # benchmarks/executor.py: hashlib.sha256 over data in memory, one core
RAY_S_PER_ITEM = 0.00092  # benchmarks/executor.py: an empty task through a 2-node cluster
ITEM_PARAMS = 4 << 20  # gguf-quantize's items: 4 Mi elements


def model(params_b: float, nodes: int, cores: int, fs_gbps: float, registry_gbps: float,
          files: int = 30) -> dict[str, dict[str, float]]:
    params = params_b * 1e9
    source = params * 2 / 1e9  # bf16, GB
    out: dict[str, dict[str, float]] = {}
    at_once = max(1, min(files, nodes * cores))  # files hashing at once, one per core
    rounds = -(-files // at_once)
    hash_s = max(rounds * source / files / SHA256_GBPS_PER_CORE, source / fs_gbps)
    # the driver hands out and collects every item: no faster than one per RAY_S_PER_ITEM
    dispatch_s = params / ITEM_PARAMS * RAY_S_PER_ITEM
    for target, rate, written, convert in (("Q4_K_M", Q4_K_M_MPARAMS_PER_CORE, params * 4.85 / 8 / 1e9, True),
                                           ("FP8", FP8_MPARAMS_PER_CORE, params / 1e9, False)):
        convert_s = 2 * source / fs_gbps if convert else 0.0
        read = source
        compute_s = params / (rate * 1e6 * nodes * cores)
        io_s = (read + written) / fs_gbps
        quantize_s = max(compute_s, io_s, dispatch_s)
        push_s = written / registry_gbps
        bound = {compute_s: "cpu", io_s: "fs", dispatch_s: "ray"}[quantize_s]
        out[target] = {"hash": hash_s, "convert": convert_s, "quantize": quantize_s, "push": push_s,
                       "total": hash_s + convert_s + quantize_s + push_s, "bound": bound}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params-b", type=float, default=70.0, help="parameters, in billions (default 70)")
    ap.add_argument("--cores-per-node", type=int, default=32, help="CPU cores per Ray node (default 32)")
    ap.add_argument("--fs-gbps", type=float, default=2.5, help="shared filesystem bandwidth, GB/s (default 2.5)")
    ap.add_argument("--registry-gbps", type=float, default=1.0, help="push bandwidth to the registry, GB/s (default 1)")
    ap.add_argument("--files", type=int, default=30, help="checkpoint files, of equal size (default 30)")
    ap.add_argument("--nodes", default="1,2,4,8,16", help="node counts to show (default 1,2,4,8,16)")
    args = ap.parse_args()
    print(f"{args.params_b:g} B parameters (bf16: {args.params_b * 2:g} GB), {args.cores_per_node} cores per node, "
          f"filesystem {args.fs_gbps:g} GB/s, registry {args.registry_gbps:g} GB/s")
    print(f"{'nodes':>5}  {'Q4_K_M':>8} {'bound':>5}  {'FP8':>8} {'bound':>5}")
    for n in (int(x) for x in args.nodes.split(",")):
        m = model(args.params_b, n, args.cores_per_node, args.fs_gbps, args.registry_gbps, args.files)
        print(f"{n:>5}  {m['Q4_K_M']['total'] / 60:>6.1f} m {m['Q4_K_M']['bound']:>5}  "
              f"{m['FP8']['total'] / 60:>6.1f} m {m['FP8']['bound']:>5}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
