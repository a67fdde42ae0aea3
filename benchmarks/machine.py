"""Machine readings shared by the benchmarks (imported as `benchmarks.machine`; ROOT is on sys.path)."""

from __future__ import annotations

import os
import platform
import time
from itertools import pairwise
from typing import Any


def offline_env(root) -> None:
    """Set what the benchmarks need before anything imports transformers, torch or Ray.

    Read at import time, and inherited by the Ray processes that ray.init starts from this one
    (so train workers and actors get them too): offline hub, caches inside the checkout, no
    progress bars; and PYTHONPATH, so Ray workers import lamini from this checkout, installed or not.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HOME", str(root / ".cache" / "hf"))
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(root / ".cache" / "torch_extensions"))
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(root)] + paths)


def machine_busy_s() -> float:
    """CPU seconds all processes on the machine spent busy (from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class LoadMonitor:
    """Samples, every `interval` s in a thread, the machine's busy CPU and that of this script's process tree.

    The tree is this process and its descendants: the Ray that run_train starts and every Ray
    worker of it. The rest ("other") is load from outside the benchmark, e.g. another test run
    sharing the 2 cores: a contender measured while "other" is well above zero is not clean.
    Approximate: a process that ended between two samples loses its last interval (counted as
    other), and a process born between two counts all its CPU in that interval.
    Costs one /proc scan per interval (a few ms), during both contenders alike.
    """

    def __init__(self, interval: float = 1.0) -> None:
        import threading

        self.interval = interval
        self.samples: list[tuple[float, float, dict[int, float]]] = []
        self.names: dict[int, str] = {}  # pid -> last /proc comm of the tree's processes ("ray::RayTrainWo", "raylet")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-monitor", daemon=True)

    @staticmethod
    def _tree_cpu() -> dict[int, float]:
        tick = os.sysconf("SC_CLK_TCK")
        parent, cpu = {}, {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(name)] = int(fields[1])
            cpu[int(name)] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        children: dict[int, list[int]] = {}
        for pid, ppid in parent.items():
            children.setdefault(ppid, []).append(pid)
        tree, stack = {os.getpid()}, [os.getpid()]
        while stack:
            for c in children.get(stack.pop(), []):
                if c not in tree:
                    tree.add(c)
                    stack.append(c)
        return {pid: cpu[pid] for pid in tree if pid in cpu}

    def _sample(self) -> None:
        tree = self._tree_cpu()
        for pid in tree:  # read each time: a Ray worker renames itself ("python", "ray::IDLE", "ray::<Actor>")
            try:
                with open(f"/proc/{pid}/comm") as f:
                    self.names[pid] = f.read().strip()
            except OSError:
                pass
        self.samples.append((time.monotonic(), machine_busy_s(), tree))

    def ray_actors(self, t0: float, t1: float, exclude: tuple[str, ...] = ("ray::IDLE",)) -> list[str]:
        """Names of the Ray actor/worker processes (comm "ray::...") of the tree alive inside [t0, t1]."""
        pids = {pid for t, _, cpu in self.samples if t0 <= t <= t1 for pid in cpu}
        return sorted(n for pid in pids if (n := self.names.get(pid, "")).startswith("ray::") and n not in exclude)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "LoadMonitor":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def span(self, t0: float, t1: float, apart: str | None = None) -> dict[str, float | None]:
        """Mean cores busy over the sample intervals inside [t0, t1]: machine, this tree, other (and other's max).

        apart: a process name (comm) whose CPU is also given alone (`apart_cores`), with the
        tree's rest other than this script (`aux_cores`: for ours, Ray's daemons and actors)."""
        self._sample()
        pts = sorted((x for x in self.samples if t0 - self.interval / 2 <= x[0] <= t1 + self.interval / 2),
                     key=lambda x: x[0])  # the thread and span() both append
        if len(pts) < 2:
            return {"machine_cores": None, "bench_cores": None, "other_cores": None, "other_cores_max": None}
        other_max, machine, bench, alone, aux = 0.0, 0.0, 0.0, 0.0, 0.0
        me = os.getpid()
        for (ta, ma, ca), (tb, mb, cb) in pairwise(pts):
            dm = mb - ma
            dc = sum(c - ca.get(pid, 0.0) for pid, c in cb.items())
            machine, bench = machine + dm, bench + dc
            other_max = max(other_max, (dm - dc) / max(tb - ta, 1e-9))
            if apart:
                for pid, c in cb.items():
                    d = c - ca.get(pid, 0.0)
                    if self.names.get(pid) == apart:
                        alone += d
                    elif pid != me:
                        aux += d
        dt = pts[-1][0] - pts[0][0]
        out = {"machine_cores": round(machine / dt, 2), "bench_cores": round(bench / dt, 2),
               "other_cores": round(max(0.0, machine - bench) / dt, 2), "other_cores_max": round(other_max, 2)}
        if apart:
            out.update(apart=apart, apart_cores=round(alone / dt, 2), aux_cores=round(aux / dt, 2))
        return out


def background_load(seconds: float = 1.0) -> float:
    """Cores busy on the whole machine over `seconds` while this script idles: other people's load."""
    b0, t0 = machine_busy_s(), time.monotonic()
    time.sleep(seconds)
    return round((machine_busy_s() - b0) / (time.monotonic() - t0), 2)


def machine_info() -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "transformers": transformers.__version__,
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    for mod in ("ray", "deepspeed"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001
            info[mod] = f"unavailable: {e}"
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info
