"""Code that works from several threads: each gets its own connection to the worker's clone.

On SQLite, writers take turns (a thread waits for the write lock); a transaction that reads
and then writes can still fail there with "database is locked" when another thread writes
at the same time, so this test's threads only write.
"""

import threading


def test_concurrent_sign_ups(concurrent_db, concurrent_db_scoped_session):
    from shop.services import register

    errors = []

    def work(n):
        try:
            register(concurrent_db_scoped_session(), f"thread{n}@example.com")
        except Exception as exc:  # shown by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with concurrent_db.transaction() as connection:  # the threads committed: clean up for the next tests
        cursor = connection.cursor()
        cursor.execute("SELECT COUNT(*) FROM customer WHERE email LIKE 'thread%'")
        assert cursor.fetchone()[0] == 4
        cursor.execute("DELETE FROM customer WHERE email LIKE 'thread%'")
