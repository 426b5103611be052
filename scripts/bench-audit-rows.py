#!/usr/bin/env python3
"""PostgreSQL's CPU per audit row, for the three layouts of the trail (issue 4).

`0017`: one table, primary key, BRIN on `recorded`, btree on `entity_id`; `0018`: the partition
being written, ids in blocks of 4,096, no entity index; then what `CREATE INDEX CONCURRENTLY`
costs per row when the partition is indexed; `0019`: one `audit_block` row per batch, the
batch's rows as COPY text lines in an uncompressed bytea. Backend CPU from /proc, so the figures hold while
the machine does other things too (less steadily). Needs PyPI `psycopg[binary]`:

    python3 -m venv target/mbenv && target/mbenv/bin/pip install 'psycopg[binary]'
    target/mbenv/bin/python scripts/bench-audit-rows.py

It creates and drops the database `auditmb2` on the server of VB_TEST_PG_URL.
"""
import os, random, time, uuid
import psycopg

random.seed(11)
ENT = [str(uuid.uuid4()) for _ in range(200_000)]   # many entities, as in production
BATCH, PRE, REPS = 1200, 300_000, int(os.environ.get("REPS", "150"))
T0 = 1_764_000_000_000_000

def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

def rows(n, start):
    return [(T0 + (start + i) * 80, random.randint(1, 3), random.randint(1, 6), 200,
             "Observation", random.choice(ENT), "127.0.0.1", uuid.uuid4().hex[:26]) for i in range(n)]

OLD = """
create table audit_log (id bigserial primary key, recorded bigint not null, agent integer,
  interaction smallint not null, status smallint not null, entity_type text, entity_id text,
  address text, request_id text);
create index audit_log_recorded on audit_log using brin (recorded);
create index audit_log_entity on audit_log (entity_id) where entity_id is not null;
"""
NEW = """
create sequence audit_log_id_seq increment by 4096;
create table audit_log (id bigint not null default nextval('audit_log_id_seq'), recorded bigint not null, agent integer,
  interaction smallint not null, status smallint not null, entity_type text, entity_id text,
  address text, request_id text, primary key (id)) partition by range (id);
create index audit_log_recorded on audit_log using brin (recorded);
create table audit_log_1 partition of audit_log for values from (1) to (1000000000);
"""
BLOCKS = """
create sequence audit_log_id_seq increment by 4096;
create table audit_block (first_id bigint primary key, last_id bigint not null, n integer not null,
  recorded_min bigint not null, recorded_max bigint not null, data bytea not null);
alter table audit_block alter column data set storage external;
create index audit_block_recorded on audit_block (recorded_max);
"""
COLS = "recorded, agent, interaction, status, entity_type, entity_id, address, request_id"

def write(variant, cur, rs):
    if variant == "0019":
        b = cur.execute("select nextval('audit_log_id_seq')").fetchone()[0]
        data = "".join("\t".join([str(b + i)] + ["\\N" if v is None else str(v) for v in r]) + "\n"
                       for i, r in enumerate(rs)).encode()
        cur.execute("insert into audit_block values (%s, %s, %s, %s, %s, %s)",
                    (b, b + len(rs) - 1, len(rs), rs[0][0], rs[-1][0], data), binary=True)
    elif variant == "0017":
        with cur.copy(f"copy audit_log ({COLS}) from stdin") as cp:
            for r in rs: cp.write_row(r)
    else:
        b = cur.execute("select nextval('audit_log_id_seq')").fetchone()[0]
        with cur.copy(f"copy audit_log (id, {COLS}) from stdin") as cp:
            for i, r in enumerate(rs): cp.write_row((b + i,) + r)

PG = os.environ.get("VB_TEST_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
admin = psycopg.connect(PG, autocommit=True)
admin.execute("drop database if exists auditmb2"); admin.execute("create database auditmb2")
c = psycopg.connect(PG.rsplit("/", 1)[0] + "/auditmb2", autocommit=True)
pid = c.execute("select pg_backend_pid()").fetchone()[0]
for variant, ddl in [("0017", OLD), ("0018", NEW), ("0019", BLOCKS)] * 2:
    c.execute("drop table if exists audit_log cascade; drop table if exists audit_block; "
              "drop sequence if exists audit_log_id_seq")
    c.execute(ddl)
    cur = c.cursor(); n = 0
    while n < PRE:
        write(variant, cur, rows(BATCH, n)); n += BATCH
    c.execute("checkpoint")
    batches = [rows(BATCH, n + i * BATCH) for i in range(REPS)]
    a = cpu(pid)
    for b in batches: write(variant, cur, b)
    d = cpu(pid) - a
    print(f"{variant}: {d / (REPS * BATCH) * 1e6:.2f} us/row backend CPU ({REPS} COPYs of {BATCH})", flush=True)
    if variant == "0018":
        total = c.execute("select count(*) from audit_log_1").fetchone()[0]
        c.execute("set max_parallel_maintenance_workers = 0")
        a = cpu(pid); t = time.time()
        c.execute("create index concurrently audit_log_1_entity on audit_log_1 (entity_id) where entity_id is not null")
        d = cpu(pid) - a
        print(f"  create index concurrently over {total} rows: {d / total * 1e6:.2f} us/row backend CPU, wall {time.time() - t:.2f} s", flush=True)
admin.execute("drop database auditmb2 with (force)")
