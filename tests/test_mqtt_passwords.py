"""The brokers' password file under several writers at once: API processes, their provisioning threads,
the CLI. Each entry written must be there afterwards, and the brokers must only ever read whole files."""

import multiprocessing
import threading
from pathlib import Path

from core.mqtt_passwords import hash_password, read_password_file, upsert_password_entries, verify_password

WRITERS = 4  # processes, and as many threads in this one
EACH = 40  # entries per writer, one upsert each


def write_many(path: str, tag: str) -> None:
    encoded = hash_password("secret-" + tag, iterations=1)
    for n in range(EACH):
        upsert_password_entries(Path(path), {f"{tag}-{n:03d}": encoded})


def test_concurrent_writers_lose_no_entry(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=write_many, args=(str(path), f"p{i}")) for i in range(WRITERS)]
    threads = [threading.Thread(target=write_many, args=(str(path), f"t{i}")) for i in range(WRITERS)]
    for worker in [*processes, *threads]:
        worker.start()
    for thread in threads:
        thread.join(120)
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    entries = read_password_file(path)
    expected = {f"{kind}{i}-{n:03d}" for kind in "pt" for i in range(WRITERS) for n in range(EACH)}
    assert expected - set(entries) == set(), "entries lost to a concurrent writer"
    assert verify_password(entries["p0-000"], "secret-p0")
    assert (path.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [".passwd.lock", "passwd"]  # no temporary file left
