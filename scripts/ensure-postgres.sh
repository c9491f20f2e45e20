# Sourced by scripts/test.sh: make sure a Postgres answers and export JUKEBOT_TEST_POSTGRES_URL.
# Order: the configured URL if it answers; the local cluster on 127.0.0.1:5432 (started if down);
# Debian's postgresql installed if missing; else a throwaway cluster run as the postgres user
# (Postgres refuses to run as root).
pg_answers() { "$PYTHON" - "$1" <<'PY'
import asyncio, sys
import asyncpg
url = sys.argv[1].replace("postgresql+asyncpg://", "postgresql://")
async def main():
    conn = await asyncio.wait_for(asyncpg.connect(url), 5)
    await conn.close()
try:
    asyncio.run(main())
except Exception as exc:
    print(f"postgres at {url}: {exc}", file=sys.stderr)
    sys.exit(1)
PY
}

export JUKEBOT_TEST_POSTGRES_URL=${JUKEBOT_TEST_POSTGRES_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/test}
if ! pg_answers "$JUKEBOT_TEST_POSTGRES_URL" 2>/dev/null; then
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        echo "installing Debian's postgresql" >&2
        if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; fi
    fi
    if ls /etc/postgresql/*/main >/dev/null 2>&1 && command -v pg_ctlcluster >/dev/null; then
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start 2>/dev/null || true
    fi
    if ! pg_answers "$JUKEBOT_TEST_POSTGRES_URL" 2>/dev/null; then
        bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
        pgdir=$(mktemp -d /tmp/jukebot-pg.XXXXXX)
        port=55432
        runas=()
        if [ "$(id -u)" = 0 ]; then chown postgres "$pgdir"; runas=(runuser -u postgres --); fi
        "${runas[@]}" "$bin/initdb" -D "$pgdir/data" -A trust -U postgres --no-sync >/dev/null
        "${runas[@]}" "$bin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w \
            -o "-c fsync=off -c listen_addresses=127.0.0.1 -p $port -k $pgdir" start >/dev/null
        "${runas[@]}" "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres test
        export JUKEBOT_TEST_POSTGRES_URL="postgresql+asyncpg://postgres@127.0.0.1:$port/test"
        trap '"${runas[@]}" "$bin/pg_ctl" -D "$pgdir/data" -m fast stop >/dev/null 2>&1 || true' EXIT
    fi
    pg_answers "$JUKEBOT_TEST_POSTGRES_URL"
fi
echo "tests use Postgres at $JUKEBOT_TEST_POSTGRES_URL" >&2
