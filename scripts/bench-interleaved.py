#!/usr/bin/env python3
"""Throughput of two settings of vitalbridge, measured in short interleaved windows.

Why: on this 2-core VM throughput drifts by tens of percent over minutes, more than the few
percent a setting costs (issue 4: the audit trail must cost less than 5 % of throughput).
`scripts/bench-ab.sh` restarts each server on a fresh database per round, so its pairs lie a
minute apart. Here both servers run side by side for the whole measurement, each on its own
seeded PostgreSQL database, and wrk (the load generator of `fhirbench`) drives one at a time
for WINDOW seconds, in the order A B B A A B …, so that each pair of windows lies seconds
apart and the drift between them is small. The idle server costs nothing meanwhile.

    scripts/bench-interleaved.py VB_AUDIT=off:target/release/vitalbridge \\
        VB_AUDIT=on:target/release/vitalbridge

Environment: PAIRS (30), WINDOW (seconds, 5), CLIENTS (32), SCENARIO (`read` or `mixed`, as
in fhirbench), VB_TEST_PG_URL. Needs wrk (Debian package). Prints each window and, per
setting, the mean req/s and the CPU time per request of the machine, the server and
PostgreSQL; then B's throughput relative to A's over the pairs (mean, median and a 95 %
interval of the mean).
"""
import base64, json, math, os, random, statistics, subprocess, sys, tempfile, time
import urllib.request

PAIRS = int(os.environ.get("PAIRS", "30"))
WINDOW = int(os.environ.get("WINDOW", "5"))
CLIENTS = int(os.environ.get("CLIENTS", "32"))
SCENARIO = os.environ.get("SCENARIO", "read")
PG = os.environ.get("VB_TEST_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
HZ = os.sysconf("SC_CLK_TCK")
SECRET = "il-%d" % random.randrange(10**12)


def ticks(pids):
    """CPU time (clock ticks) of the processes, user and system."""
    total = 0
    for pid in pids:
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except FileNotFoundError:
            pass
    return total


def busy():
    """Busy CPU time of the machine: user, nice, system, irq, softirq."""
    f = open("/proc/stat").readline().split()
    return sum(int(f[i]) for i in (1, 2, 3, 6, 7))


def stolen():
    """Time the machine waited: iowait and steal (ticks)."""
    f = open("/proc/stat").readline().split()
    return int(f[5]), int(f[8])


def pg_pids():
    out = subprocess.run(["pgrep", "-x", "postgres"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


class Server:
    def __init__(self, n, arg):
        self.setting, self.binary = arg.split(":", 1) if "=" in arg.split(":", 1)[0] else ("", arg)
        self.port = 18200 + n
        self.db = f"vb_il_{os.getpid()}_{n}"
        subprocess.run(["psql", PG, "-qc", f"drop database if exists {self.db}", "-c",
                        f"create database {self.db}"], check=True, capture_output=True)
        env = dict(os.environ, VB_LOG="warn", VB_BOOTSTRAP_CLIENT_ID="il",
                   VB_BOOTSTRAP_CLIENT_SECRET=SECRET,
                   DATABASE_URL=PG.rsplit("/", 1)[0] + "/" + self.db)
        if self.setting:
            k, v = self.setting.split("=", 1)
            env[k] = v
        self.proc = subprocess.Popen([self.binary, "serve", "--listen", f"127.0.0.1:{self.port}"],
                                     env=env)
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        else:
            sys.exit(f"{arg} did not start")
        if os.environ.get("SETUP_SQL"):
            # An experiment's change to each database (e.g. a PostgreSQL setting).
            subprocess.run(["psql", env["DATABASE_URL"], "-qc", os.environ["SETUP_SQL"]],
                           check=True)
        conf = json.load(urllib.request.urlopen(self.base + "/.well-known/smart-configuration"))
        self.token_url = conf["token_endpoint"]
        self.token_at = 0.0

    def token(self):
        # Tokens last at most 5 minutes (issue 4): a fresh one every 2.
        if time.time() - self.token_at > 120:
            basic = base64.b64encode(f"il:{SECRET}".encode()).decode()
            req = urllib.request.Request(
                self.token_url, data=b"grant_type=client_credentials", method="POST",
                headers={"Authorization": "Basic " + basic,
                         "Content-Type": "application/x-www-form-urlencoded"})
            self._token = json.load(urllib.request.urlopen(req))["access_token"]
            self.token_at = time.time()
        return self._token

    def post(self, path, body):
        req = urllib.request.Request(
            self.base + path, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json",
                     "Authorization": "Bearer " + self.token()})
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read())["id"]

    def seed(self, work):
        """20 Patients and 2,000 Observations, as fhirbench seeds."""
        pats = [self.post("/Patient", {"resourceType": "Patient", "name": [{"family": f"Il{i}"}]})
                for i in range(20)]
        ids = [self.post("/Observation", observation(pats[i % 20], i)) for i in range(2000)]
        d = os.path.join(work, str(self.port))
        os.makedirs(d)
        open(f"{d}/ids.txt", "w").write("\n".join(ids))
        open(f"{d}/pats.txt", "w").write("\n".join(pats))
        open(f"{d}/obs.json", "w").write(json.dumps(observation(pats[0], 7)))
        self.lua = f"{d}/{SCENARIO}.lua"
        open(self.lua, "w").write(LUA[SCENARIO].replace("DIR", d))

    def window(self, seconds):
        """Runs wrk for `seconds`; returns (req/s, machine, server, PostgreSQL, wrk CPU ticks,
        iowait, steal ticks, the audit connection's CPU ticks)."""
        pgs = pg_pids()
        # The audit writer's own connection (`application_name` vitalbridge-audit), if any.
        aud = subprocess.run(
            ["psql", PG, "-Atc", "select pid from pg_stat_activity where application_name = "
             f"'vitalbridge-audit' and datname = '{self.db}'"],
            capture_output=True, text=True).stdout.split()
        b0, s0, p0, a0 = busy(), ticks([self.proc.pid]), ticks(pgs), ticks(aud)
        w0, (io0, st0) = os.times(), stolen()
        out = subprocess.run(
            ["wrk", "-t2", f"-c{CLIENTS}", f"-d{seconds}s", "--timeout", "30s",
             "-H", "Authorization: Bearer " + self.token(), "-s", self.lua,
             f"http://127.0.0.1:{self.port}"], capture_output=True, text=True).stdout
        b1, s1, p1, a1 = busy(), ticks([self.proc.pid]), ticks(pgs), ticks(aud)
        w1, (io1, st1) = os.times(), stolen()
        # wrk's CPU: a control, since the setting cannot change what wrk does per request.
        w = (w1.children_user + w1.children_system - w0.children_user - w0.children_system) * HZ
        line = next((l for l in out.splitlines() if l.startswith("RESULT")), None)
        if line is None or "non2xx=0" not in line or "errors=0" not in line:
            sys.exit(f"wrk against {self.setting or self.binary}: {line or out}")
        rate = float(line.split("req/s=")[1].split()[0])
        return rate, b1 - b0, s1 - s0, p1 - p0, w, io1 - io0, st1 - st0, a1 - a0

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        subprocess.run(["psql", PG, "-qc", f"drop database if exists {self.db} with (force)"],
                       capture_output=True)


def observation(p, i):
    vs = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                       "code": "vital-signs"}]}]
    return {"resourceType": "Observation", "status": "final", "category": vs,
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/" + p},
            "effectiveDateTime": "2026-10-%02dT08:00:00Z" % (1 + i % 28),
            "valueQuantity": {"value": 60 + i % 40, "unit": "/min",
                              "system": "http://unitsofmeasure.org", "code": "/min"}}


COMMON = """
local function lines(f) local t = {} for l in io.lines(f) do t[#t+1] = l end return t end
ids = lines("DIR/ids.txt"); pats = lines("DIR/pats.txt")
local fh = io.open("DIR/obs.json"); obsbody = fh:read("*a"); fh:close()
wrk.headers["Accept"] = "application/fhir+json"; wrk.headers["Content-Type"] = "application/fhir+json"
done = function(summary, latency, requests)
  io.write(string.format("RESULT req/s=%.1f errors=%d non2xx=%d\\n",
    summary.requests / (summary.duration / 1e6),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
"""
LUA = {
    "read": COMMON + """
request = function() return wrk.format("GET", "/fhir/Observation/" .. ids[math.random(#ids)]) end
""",
    # fhirbench's mixed: create, read, update and read Patient in equal parts.
    "mixed": COMMON + """
local n = 0
request = function()
  n = n + 1
  local k = n % 4
  if k == 0 then return wrk.format("POST", "/fhir/Observation", nil, obsbody)
  elseif k == 1 then return wrk.format("GET", "/fhir/Observation/" .. ids[math.random(#ids)])
  elseif k == 2 then local id = ids[math.random(#ids)]
    return wrk.format("PUT", "/fhir/Observation/" .. id, nil, string.gsub(obsbody, '"resourceType": "Observation"', '"resourceType": "Observation", "id": "' .. id .. '"', 1))
  else return wrk.format("GET", "/fhir/Patient/" .. pats[math.random(#pats)]) end
end
""",
}


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    servers = [Server(n, a) for n, a in enumerate(sys.argv[1:])]
    names = [s.setting or s.binary for s in servers]
    try:
        with tempfile.TemporaryDirectory() as work:
            for s in servers:
                s.seed(work)
                # Both databases in the same physical state: without this (autovacuum is off
                # on the test machine) whichever database's pages the warm-up happened to
                # settle (hint bits, visibility map) read cheaper, and whole runs differed by
                # ±5 % in PostgreSQL's CPU per request whatever the setting.
                subprocess.run(["psql", PG.rsplit("/", 1)[0] + "/" + s.db, "-qc",
                                "vacuum (freeze, analyze)"], check=True)
                s.window(3)  # warm-up
            rows = {0: [], 1: []}
            ratios = []
            for pair in range(PAIRS):
                order = (0, 1) if pair % 2 == 0 else (1, 0)
                got = {}
                for i in order:
                    got[i] = servers[i].window(WINDOW)
                    rows[i].append(got[i])
                    r, b, sv, p, w, io, st, a = got[i]
                    n = r * WINDOW
                    print(f"pair {pair + 1:3} {names[i]:>14}: {r:9.1f} req/s, CPU us/req "
                          f"machine {b / HZ / n * 1e6:6.1f} server {sv / HZ / n * 1e6:6.1f} "
                          f"PostgreSQL {p / HZ / n * 1e6:6.1f} (audit {a / HZ / n * 1e6:4.1f}) "
                          f"wrk {w / HZ / n * 1e6:5.1f}; "
                          f"iowait {io} steal {st} ticks", flush=True)
                ratios.append(got[1][0] / got[0][0])
    finally:
        for s in servers:
            s.stop()
    print(f"\n{PAIRS} pairs of {WINDOW} s windows, {CLIENTS} connections, scenario {SCENARIO}")
    for i in (0, 1):
        r = [x[0] for x in rows[i]]
        n = sum(x[0] * WINDOW for x in rows[i])
        per = lambda k: sum(x[k] for x in rows[i]) / HZ / n * 1e6
        print(f"{names[i]:>14}: mean {statistics.mean(r):9.1f} req/s; CPU us/req machine "
              f"{per(1):.1f}, server {per(2):.1f}, PostgreSQL {per(3):.1f} (audit connection "
              f"{per(7):.1f}), wrk {per(4):.1f}; "
              f"iowait {sum(x[5] for x in rows[i])} steal {sum(x[6] for x in rows[i])} ticks")
    mean = statistics.mean(ratios)
    half = 1.96 * statistics.stdev(ratios) / math.sqrt(len(ratios))
    print(f"{names[1]} / {names[0]} throughput: mean {100 * (mean - 1):+.2f} % "
          f"(95 % interval {100 * (mean - half - 1):+.2f} % to {100 * (mean + half - 1):+.2f} %), "
          f"median {100 * (statistics.median(ratios) - 1):+.2f} %")


if __name__ == "__main__":
    main()
