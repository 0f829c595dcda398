-- The quickstart schema (SQLite, the default backend).
CREATE TABLE customer (
    id INTEGER PRIMARY KEY,
    name VARCHAR(100) NOT NULL UNIQUE
);
CREATE TABLE purchase (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    FOREIGN KEY (customer_id) REFERENCES customer (id)
);
CREATE VIEW customer_total AS
    SELECT c.name, COALESCE(SUM(p.amount), 0) AS total
    FROM customer c LEFT JOIN purchase p ON p.customer_id = c.id
    GROUP BY c.name;
INSERT INTO customer (id, name) VALUES (1, 'Ada'), (2, 'Grace');
