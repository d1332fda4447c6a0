"""Print the runtime requirements of quakescan for a container image.

pyproject.toml asks for onnxruntime-gpu on Linux x86_64 (one wheel for GPU and
CPU hosts), which adds about 340 MB of CUDA kernels to an image that never sees
a GPU. The images install these requirements first, then quakescan itself with
``--no-deps``:

    python requirements.py pyproject.toml --onnxruntime cpu            # slim CPU image
    python requirements.py pyproject.toml --onnxruntime gpu==1.31.1    # CUDA image
    python requirements.py pyproject.toml --onnxruntime cpu --extra train

Standard library only: it runs in a bare python image before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"cannot read a package name from requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def runtime_requirements(pyproject: dict, onnxruntime: str, extras: list[str]) -> list[str]:
    """The project's dependencies (plus ``extras``) with ONNX Runtime replaced.

    onnxruntime: ``cpu`` for the CPU wheel, ``gpu`` or ``gpu==VERSION`` for the CUDA
    wheel; the version range written in pyproject.toml is kept unless one is given.
    """
    project = pyproject["project"]
    deps = list(project["dependencies"])
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise ValueError(f"extra {extra!r} is not in pyproject.toml (have: {sorted(optional)})")
        deps.extend(optional[extra])

    kind, _, pin = onnxruntime.partition("==")
    if kind not in ("cpu", "gpu"):
        raise ValueError(f"--onnxruntime {onnxruntime!r}: expected cpu, gpu or gpu==VERSION")
    wanted = "onnxruntime" if kind == "cpu" else "onnxruntime-gpu"

    out: list[str] = []
    ort_spec = ""
    for dep in deps:
        name = _name(dep)
        if name in ("onnxruntime", "onnxruntime-gpu"):
            # keep the version range, drop the platform marker
            ort_spec = ort_spec or dep.split(";")[0].strip()[len(name) :].strip()
            continue
        out.append(dep)
    if not ort_spec and not pin:
        raise ValueError("pyproject.toml names neither onnxruntime nor onnxruntime-gpu")
    out.append(f"{wanted}=={pin}" if pin else f"{wanted}{ort_spec}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", help="path to quakescan's pyproject.toml")
    parser.add_argument("--onnxruntime", default="cpu", help="cpu, gpu or gpu==VERSION")
    parser.add_argument("--extra", action="append", default=[], help="optional extra to add")
    args = parser.parse_args(argv)
    with open(args.pyproject, "rb") as fh:
        pyproject = tomllib.load(fh)
    try:
        lines = runtime_requirements(pyproject, args.onnxruntime, args.extra)
    except ValueError as exc:
        print(f"requirements.py: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
