"""A handful of tests that each write to the database; run them with `pytest -n 2 --concurrent-db`."""

import pytest


def test_seed_rows_come_from_the_template(concurrent_db_connection):
    cur = concurrent_db_connection.cursor()
    cur.execute("SELECT name FROM customer ORDER BY id")
    assert [row[0] for row in cur.fetchall()] == ["Ada", "Grace"]


@pytest.mark.parametrize("amount", [10, 20, 30, 40])
def test_purchase_in_a_rolled_back_transaction(concurrent_db_transaction, sql, amount):
    cur = concurrent_db_transaction.cursor()
    cur.execute(sql("INSERT INTO purchase (customer_id, amount) VALUES (?, ?)"), (1, amount))
    cur.execute(sql("SELECT total FROM customer_total WHERE name = ?"), ("Ada",))
    assert cur.fetchone()[0] == amount  # nothing from other tests or other workers


def test_foreign_key_is_enforced(concurrent_db, concurrent_db_transaction, sql):
    cur = concurrent_db_transaction.cursor()
    if concurrent_db.backend == "sqlite":
        cur.execute("PRAGMA foreign_keys = ON")
    with pytest.raises(Exception, match=r"(?i)foreign key"):
        cur.execute(sql("INSERT INTO purchase (customer_id, amount) VALUES (?, ?)"), (99, 1))


def test_committed_rows_stay_in_this_workers_database(concurrent_db, concurrent_db_connection, worker_id, sql):
    cur = concurrent_db_connection.cursor()
    cur.execute(sql("INSERT INTO customer (name) VALUES (?)"), (f"customer of {worker_id}",))
    concurrent_db_connection.commit()
    cur.execute("SELECT name FROM customer WHERE name LIKE 'customer of %'")
    assert [row[0] for row in cur.fetchall()] == [f"customer of {worker_id}"]
    cur.execute(sql("DELETE FROM customer WHERE name = ?"), (f"customer of {worker_id}",))
    concurrent_db_connection.commit()
