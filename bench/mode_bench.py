"""Driver for bench/mode.sh (see there). Times, per tree size:
- ams-agent: first switch of a fresh tree (includes the one-time backups), and
  steady-state switches (alternating cluster/standalone on one tree);
- shell: the sed steps of change_server_mode.sh (4 `sed -i` per webapp, 3 on
  red5.properties, 2 on jee-container.xml), each run in one bash process;
- floor: the same number of files written durably (write, fsync, rename,
  fsync folder) in-process, with no parsing at all.
"""
import os, shutil, statistics, subprocess, sys, tempfile, time

BIN = os.path.abspath(sys.argv[1])
RUNS = int(sys.argv[2])
EXAMPLE = os.path.abspath("examples/host")
AMS = "usr/local/antmedia"


def make_tree(dest, apps):
    shutil.copytree(EXAMPLE, dest)
    webapps = os.path.join(dest, AMS, "webapps")
    template = open(os.path.join(webapps, "LiveApp/WEB-INF/red5-web.properties")).read()
    for name in os.listdir(webapps):
        if name != "root":
            shutil.rmtree(os.path.join(webapps, name))
    for i in range(1, apps):
        d = os.path.join(webapps, "App%03d" % i, "WEB-INF")
        os.makedirs(d)
        with open(os.path.join(d, "red5-web.properties"), "w") as f:
            f.write(template.replace("LiveApp", "App%03d" % i))


def files_of(tree):
    webapps = os.path.join(tree, AMS, "webapps")
    apps = [os.path.join(webapps, a, "WEB-INF/red5-web.properties") for a in sorted(os.listdir(webapps))]
    return [os.path.join(tree, AMS, "conf/red5.properties"), os.path.join(tree, AMS, "conf/jee-container.xml"),
            os.path.join(tree, "etc/hosts")] + apps


def agent(tree, mode):
    args = [BIN, "-q", "mode", mode] + (["10.0.1.5"] if mode == "cluster" else []) + ["--ip", "10.0.1.20", "--no-restart", "--skip-db-check"]
    t = time.perf_counter()
    subprocess.run(args, env={"AMS_AGENT_ROOT": tree, "PATH": os.environ["PATH"]}, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def sed_script(tree):
    ams = os.path.join(tree, AMS)
    lines = [
        f"sed -i 's/<!-- cluster start/<!-- cluster start -->/' {ams}/conf/jee-container.xml",
        f"sed -i 's/cluster end -->/<!-- cluster end -->/' {ams}/conf/jee-container.xml",
        f"sed -i 's/clusterdb.host=.*/clusterdb.host=mongodb:\\/\\/10.0.1.5:27017/' {ams}/conf/red5.properties",
        f"sed -i 's/clusterdb.user=.*/clusterdb.user=/' {ams}/conf/red5.properties",
        f"sed -i 's/clusterdb.password=.*/clusterdb.password=/' {ams}/conf/red5.properties",
        f"for f in {ams}/webapps/*/WEB-INF/red5-web.properties; do",
        "  sed -i 's/db.type=.*/db.type=mongodb/' $f",
        "  sed -i 's/db.host=.*/db.host=mongodb:\\/\\/10.0.1.5:27017/' $f",
        "  sed -i 's/db.user=.*/db.user=/' $f",
        "  sed -i 's/db.password=.*/db.password=/' $f",
        "done",
    ]
    return "\n".join(lines) + "\n"


def shell(tree):
    script = sed_script(tree)
    t = time.perf_counter()
    subprocess.run(["bash", "-c", script], check=True)
    return time.perf_counter() - t


def floor(tree):
    files = files_of(tree)
    contents = [open(f, "rb").read() for f in files]
    t = time.perf_counter()
    for path, data in zip(files, contents):
        tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".floor")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, path)
        dfd = os.open(os.path.dirname(path), os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
    return time.perf_counter() - t


def median_ms(xs):
    return statistics.median(xs) * 1000


print(f"ams-agent mode cluster, {RUNS} runs per case, median wall time (ms)")
print(f"{'webapps':>8} {'files':>6} {'agent first':>12} {'agent steady':>13} {'shell (sed)':>12} {'floor':>8} {'shell/agent':>12} {'agent/floor':>12}")
with tempfile.TemporaryDirectory() as base:
    for apps in (4, 200):
        first, steady, sh, fl = [], [], [], []
        for i in range(RUNS):
            tree = os.path.join(base, f"first-{apps}-{i}")
            make_tree(tree, apps)
            first.append(agent(tree, "cluster"))
        tree = os.path.join(base, f"steady-{apps}")
        make_tree(tree, apps)
        agent(tree, "cluster")
        agent(tree, "standalone")
        for i in range(RUNS):
            steady.append(agent(tree, "cluster"))
            agent(tree, "standalone")
        for i in range(RUNS):
            tree = os.path.join(base, f"sed-{apps}-{i}")
            make_tree(tree, apps)
            sh.append(shell(tree))
        tree = os.path.join(base, f"floor-{apps}")
        make_tree(tree, apps)
        for i in range(RUNS):
            fl.append(floor(tree))
        nfiles = len(files_of(tree))
        a, s, f, st = median_ms(first), median_ms(sh), median_ms(fl), median_ms(steady)
        print(f"{apps:>8} {nfiles:>6} {a:>12.2f} {st:>13.2f} {s:>12.2f} {f:>8.2f} {s / st:>11.1f}x {st / f:>11.2f}x")
