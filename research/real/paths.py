"""Where the study finds its inputs and keeps its caches. Every script imports this (through load,
codev, detlib or run_sim), which also takes two options off the command line:

  --data DIR     folder holding d2-train.jsonl.gz, d2-test.jsonl.gz, d3-train.jsonl.gz, d3-test.jsonl.gz.
                 Default: $KANARY_SERVICES_DATA, else the repository's cut at data/services.
  --kanary PATH  the kanary binary that writes the simulated streams.
                 Default: target/release/kanary in the repository.

Caches (parsed data, compiled C libraries, simulated streams) go under ${KANARY_CACHE:-~/.cache/kanary}/real.
"""
import hashlib
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
SERVICE_FILES = ("d2-train.jsonl.gz", "d2-test.jsonl.gz", "d3-train.jsonl.gz", "d3-test.jsonl.gz")

# The simulated streams of FINDINGS.md: `kanary simulate` arguments per name.
SIM_ARGS = {
    "seed": ["--scenario", "seed", "--count", "50000", "--seed", "7"],
    "micro": ["--scenario", "microservices", "--count", "200000", "--seed", "1"],
}


def _take_option(name):
    """Remove `name VALUE` or `name=VALUE` from sys.argv and return VALUE (None when absent)."""
    argv = sys.argv
    for i in range(1, len(argv)):
        a = argv[i]
        if a == name:
            if i + 1 >= len(argv):
                raise SystemExit(f"{name} needs a value")
            v = argv[i + 1]
            del argv[i:i + 2]
            return v
        if a.startswith(name + "="):
            del argv[i]
            return a.split("=", 1)[1]
    return None


_DATA_ARG = _take_option("--data")
_KANARY_ARG = _take_option("--kanary")


def data_dir():
    d = _DATA_ARG or os.environ.get("KANARY_SERVICES_DATA") or os.path.join(REPO, "data", "services")
    return os.path.abspath(os.path.expanduser(d))


def service_file(ds, split):
    path = os.path.join(data_dir(), f"{ds}-{split}.jsonl.gz")
    if not os.path.isfile(path):
        raise SystemExit(
            f"service data not found: {path}\n"
            f"Pass --data DIR or set KANARY_SERVICES_DATA to the folder holding {', '.join(SERVICE_FILES)}.\n"
            "The default is the repository's cut at data/services; data/services/README.md describes the full set.")
    return path


def cache_root():
    return os.path.expanduser(os.environ.get("KANARY_CACHE") or os.path.join("~", ".cache", "kanary"))


def cache_dir(*sub):
    d = os.path.join(cache_root(), "real", *sub)
    os.makedirs(d, exist_ok=True)
    return d


def file_key(path):
    """Short key of a file's location, size and mtime, so caches of different data folders do not collide."""
    st = os.stat(path)
    return hashlib.sha1(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]


def build_so(name):
    """Compile HERE/<name>.c into a shared library in the cache (when missing or older than the source)."""
    src = os.path.join(HERE, name + ".c")
    so = os.path.join(cache_dir(), name + ".so")
    if not os.path.exists(so) or os.path.getmtime(so) < os.path.getmtime(src):
        subprocess.check_call(["gcc", "-O2", "-shared", "-fPIC", "-o", so, src, "-lm"])
    return so


def kanary_bin():
    b = os.path.abspath(os.path.expanduser(_KANARY_ARG)) if _KANARY_ARG else os.path.join(REPO, "target", "release", "kanary")
    if not (os.path.isfile(b) and os.access(b, os.X_OK)):
        raise SystemExit(f"kanary binary not found: {b}\n"
                         "Build it with `cargo build --release` at the repository root, or pass --kanary PATH.")
    return b


def sim_file(name):
    """The simulated stream `name` (seed or micro), written with `kanary simulate` on first use.
    Delete the cache folder's sim/ to regenerate it (e.g. after the simulator changed)."""
    path = os.path.join(cache_dir("sim"), name + ".jsonl")
    if not os.path.exists(path):
        tmp = path + ".part"
        cmd = [kanary_bin(), "simulate", *SIM_ARGS[name], "--output", tmp]
        print("writing", path, "with:", " ".join(cmd[1:]), file=sys.stderr, flush=True)
        env = dict(os.environ)
        env.pop("KANARY_BROKERS", None)  # write the file, not to Kafka
        subprocess.check_call(cmd, env=env)
        os.replace(tmp, path)
    return path
