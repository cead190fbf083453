#!/usr/bin/env python3
"""Helpers for bench/runtime.sh (standard library only).

Subcommands:
  bundle RUNTIME SPEC_JSON BUNDLE_DIR ROOTFS CGROUPS_PATH MEMORY_BYTES ARG...
      edit a `crun spec`/`runc spec` config.json into BUNDLE_DIR/config.json: the given
      process args, no terminal, namespaces pid+mount+uts+ipc+network (as Gantry), a read-only
      root at ROOTFS, a memory limit and a cgroups path.
  cgroup-base
      print the cgroup path (absolute, as seen in /proc/self/cgroup) under which benchmark
      runtimes may create cgroups: this process's memory cgroup, checked to lie under this
      process's cgroup in every other v1 hierarchy and in cgroup2.
  cgroup-snapshot BASE OUT_JSON / cgroup-cleanup BASE SNAPSHOT_JSON
      record which ancestors of BASE exist in each mounted hierarchy, and later remove BASE,
      everything under it (empty cgroups only) and the ancestors that did not exist before.
  latency RUNS WARMUP OUT_JSON -- CMD...
      startup latency: time from just before spawning CMD to the unix-ns timestamp CMD prints
      as the first line of its stdout (the workload's `now` command), RUNS times.
  report OUT_MD HYPERFINE_JSON... [--latency LATENCY_JSON...] [--rss RSS_JSON]
      a markdown summary: median/p99/mean/min per command, ratios against crun and runc.
  rss PID OUT_JSON LABEL
      VmRSS/VmHWM from /proc/PID/status and Pss/Rss from /proc/PID/smaps_rollup.
"""

import json
import os
import subprocess
import sys
import time


def fail(msg):
    print(f"benchlib: error: {msg}", file=sys.stderr)
    sys.exit(1)


# ---------------------------------------------------------------------------------------------
# bundles


def cmd_bundle(args):
    if len(args) < 7:
        fail("bundle: RUNTIME SPEC_JSON BUNDLE_DIR ROOTFS CGROUPS_PATH MEMORY_BYTES ARG...")
    runtime, spec, bundle, rootfs, cgroups_path, memory = args[:6]
    proc_args = args[6:]
    with open(spec) as f:
        cfg = json.load(f)
    cfg["root"] = {"path": os.path.abspath(rootfs), "readonly": True}
    cfg["process"]["args"] = proc_args
    cfg["process"]["terminal"] = False
    cfg["process"]["cwd"] = "/"
    linux = cfg.setdefault("linux", {})
    linux["namespaces"] = [{"type": t} for t in ("pid", "mount", "uts", "ipc", "network")]
    linux["cgroupsPath"] = cgroups_path
    linux["resources"] = {
        "devices": [{"allow": False, "access": "rwm"}],
        "memory": {"limit": int(memory)},
    }
    cfg["hostname"] = f"bench-{runtime}"
    os.makedirs(bundle, exist_ok=True)
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)


# ---------------------------------------------------------------------------------------------
# cgroups


def own_cgroups():
    """{controller-or-'': path} from /proc/self/cgroup."""
    out = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in ctrls.split(",") if ctrls else [""]:
                out[c] = path
    return out


def cgroup_mounts():
    """Mount points of every cgroup/cgroup2 filesystem, from /proc/self/mountinfo."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, post = line.split(" - ", 1)
            fstype = post.split()[0]
            if fstype in ("cgroup", "cgroup2"):
                mounts.append(pre.split()[4])
    return mounts


def is_under(path, ancestor):
    return ancestor == "/" or path == ancestor or path.startswith(ancestor.rstrip("/") + "/")


def cmd_cgroup_base(_args):
    own = own_cgroups()
    base = own.get("memory")
    if base is None:
        fail("no memory controller in /proc/self/cgroup")
    for ctrl, path in own.items():
        if not is_under(base, path):
            fail(f"own {ctrl or 'cgroup2'} cgroup {path} is not an ancestor of memory cgroup "
                 f"{base}: no single cgroupsPath stays under our own cgroups")
    print(base)


def ancestors(base):
    parts = [p for p in base.split("/") if p]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def cmd_cgroup_snapshot(args):
    base, out = args
    snap = {m: [a for a in ancestors(base) if os.path.isdir(m + a)] for m in cgroup_mounts()}
    with open(out, "w") as f:
        json.dump(snap, f)


def rmdir_tree(path):
    """Removes empty cgroup directories bottom-up; a cgroup with processes stays (and is
    reported)."""
    ok = True
    for dirpath, dirnames, _ in os.walk(path, topdown=False):
        try:
            os.rmdir(dirpath)
        except FileNotFoundError:
            pass
        except OSError as e:
            print(f"benchlib: cannot remove cgroup {dirpath}: {e}", file=sys.stderr)
            ok = False
    return ok


def cmd_cgroup_cleanup(args):
    base, snap_file = args
    with open(snap_file) as f:
        snap = json.load(f)
    ok = True
    for mount, existed in snap.items():
        # Only directories created during the run: BASE itself must not have existed.
        for anc in reversed(ancestors(base)):
            if anc in existed:
                break
            full = mount + anc
            if not os.path.isdir(full):
                continue
            if anc == base:
                ok = rmdir_tree(full) and ok
            else:
                try:
                    os.rmdir(full)
                except OSError as e:
                    print(f"benchlib: cannot remove cgroup {full}: {e}", file=sys.stderr)
                    ok = False
    sys.exit(0 if ok else 1)


# ---------------------------------------------------------------------------------------------
# statistics


def percentile(values, p):
    """Nearest-rank percentile of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def summarize(values):
    s = sorted(values)
    n = len(s)
    median = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    mean = sum(s) / n
    std = (sum((v - mean) ** 2 for v in s) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return {"n": n, "median": median, "p99": percentile(s, 99), "mean": mean, "std": std,
            "min": s[0], "max": s[-1]}


# ---------------------------------------------------------------------------------------------
# startup latency


def cmd_latency(args):
    if "--" not in args:
        fail("latency: RUNS WARMUP OUT_JSON LABEL -- CMD...")
    sep = args.index("--")
    runs, warmup, out, label = int(args[0]), int(args[1]), args[2], args[3]
    cmd = args[sep + 1:]
    lat, wall = [], []
    for i in range(warmup + runs):
        t0 = time.time_ns()
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        t2 = time.time_ns()
        if p.returncode != 0:
            fail(f"latency: {' '.join(cmd)} exited {p.returncode}: {p.stderr.decode()[-500:]}")
        first = p.stdout.decode().strip().splitlines()
        try:
            t1 = int(first[0])
        except (IndexError, ValueError):
            fail(f"latency: {' '.join(cmd)} printed {p.stdout[:200]!r}, not unix nanoseconds")
        if i >= warmup:
            lat.append((t1 - t0) / 1e6)
            wall.append((t2 - t0) / 1e6)
    res = {"label": label, "command": cmd, "unit": "ms",
           "first_instruction": summarize(lat), "wall": summarize(wall), "samples": lat}
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    s = res["first_instruction"]
    print(f"{label}: first instruction after median {s['median']:.2f} ms, p99 {s['p99']:.2f} ms",
          file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# memory of a process


def read_kv(path):
    out = {}
    try:
        with open(path) as f:
            for line in f:
                if ":" in line:
                    k, v = line.split(":", 1)
                    out[k.strip()] = v.strip()
    except OSError:
        pass
    return out


def kib(v):
    return int(v.split()[0]) if v else None


def cmd_rss(args):
    pid, out, label = args
    status = read_kv(f"/proc/{pid}/status")
    rollup = read_kv(f"/proc/{pid}/smaps_rollup")
    if not status:
        fail(f"rss: process {pid} does not exist")
    res = {"label": label, "pid": int(pid), "name": status.get("Name"),
           "VmRSS_kib": kib(status.get("VmRSS")), "VmHWM_kib": kib(status.get("VmHWM")),
           "Threads": int(status.get("Threads", "0")),
           "Rss_kib": kib(rollup.get("Rss")), "Pss_kib": kib(rollup.get("Pss")),
           "Private_kib": (kib(rollup.get("Private_Clean")) or 0)
           + (kib(rollup.get("Private_Dirty")) or 0)}
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"{label}: pid {pid} VmRSS {res['VmRSS_kib']} KiB, Pss {res['Pss_kib']} KiB, "
          f"private {res['Private_kib']} KiB, threads {res['Threads']}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# report


def cmd_report(args):
    out = args[0]
    hf, lat, rss = [], [], []
    mode = hf
    for a in args[1:]:
        if a == "--latency":
            mode = lat
        elif a == "--rss":
            mode = rss
        else:
            mode.append(a)
    lines = []
    rows = {}
    if hf:
        lines += ["## Run a container to completion (`/bin/true`), wall clock", "",
                  "| command | median ms | p99 ms | mean ± σ ms | min ms | runs |",
                  "|---|---:|---:|---:|---:|---:|"]
        for path in hf:
            with open(path) as f:
                data = json.load(f)
            for r in data["results"]:
                label = os.path.splitext(os.path.basename(path))[0]
                s = summarize([t * 1000 for t in r["times"]])
                rows[label] = s
                lines.append(f"| {label} | {s['median']:.2f} | {s['p99']:.2f} | "
                             f"{s['mean']:.2f} ± {s['std']:.2f} | {s['min']:.2f} | {s['n']} |")
        lines.append("")
        ratios = []
        gantry = [k for k in rows if k.startswith("gantry")]
        for g in gantry:
            for other in ("crun", "runc", "floor"):
                if other in rows:
                    ratios.append(f"| {g} / {other} | "
                                  f"{rows[g]['median'] / rows[other]['median']:.2f} | "
                                  f"{rows[g]['p99'] / rows[other]['p99']:.2f} |")
            if "crun" in rows and "crun-wrapper" in rows:
                net = rows["crun"]["median"] - rows["crun-wrapper"]["median"]
                if net > 0:
                    ratios.append(f"| {g} / (crun − wrapper median) | "
                                  f"{rows[g]['median'] / net:.2f} | – |")
        if "crun-wrapper" in rows:
            lines.append("crun-wrapper is `unshare --mount sh -c 'umount /sys/fs/cgroup/unified "
                         "&& exec \"$@\"'` running `/bin/true`: the cost the crun row carries "
                         "for hiding cgroup2 from crun on this hybrid host.")
            lines.append("")
        if ratios:
            lines += ["| ratio | median | p99 |", "|---|---:|---:|"] + ratios + [""]
    if lat:
        lines += ["## Startup latency: invocation to the container's first instruction", "",
                  "| command | median ms | p99 ms | min ms | whole run median ms | runs |",
                  "|---|---:|---:|---:|---:|---:|"]
        for path in lat:
            with open(path) as f:
                d = json.load(f)
            s, w = d["first_instruction"], d["wall"]
            lines.append(f"| {d['label']} | {s['median']:.2f} | {s['p99']:.2f} | "
                         f"{s['min']:.2f} | {w['median']:.2f} | {s['n']} |")
        lines.append("")
    if rss:
        lines += ["## Memory of a process (detached `sleep infinity` container)", "",
                  "| process | VmRSS KiB | Pss KiB | private KiB | threads |",
                  "|---|---:|---:|---:|---:|"]
        for path in rss:
            with open(path) as f:
                d = json.load(f)
            lines.append(f"| {d['label']} | {d['VmRSS_kib']} | {d['Pss_kib']} | "
                         f"{d['Private_kib']} | {d['Threads']} |")
        lines.append("")
    text = "\n".join(lines)
    with open(out, "w") as f:
        f.write(text + "\n")
    print(text)


def main():
    if len(sys.argv) < 2:
        fail(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    handlers = {"bundle": cmd_bundle, "cgroup-base": cmd_cgroup_base,
                "cgroup-snapshot": cmd_cgroup_snapshot, "cgroup-cleanup": cmd_cgroup_cleanup,
                "latency": cmd_latency, "rss": cmd_rss, "report": cmd_report}
    if cmd not in handlers:
        fail(f"unknown subcommand {cmd!r}\n{__doc__}")
    handlers[cmd](args)


if __name__ == "__main__":
    main()
