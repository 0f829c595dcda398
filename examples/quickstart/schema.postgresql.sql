CREATE TABLE customer (id SERIAL PRIMARY KEY, name VARCHAR(100) NOT NULL UNIQUE);
CREATE TABLE purchase (
    id SERIAL PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customer (id),
    amount INTEGER NOT NULL
);
CREATE VIEW customer_total AS
    SELECT c.name, COALESCE(SUM(p.amount), 0) AS total
    FROM customer c LEFT JOIN purchase p ON p.customer_id = c.id
    GROUP BY c.name;
INSERT INTO customer (id, name) VALUES (1, 'Ada'), (2, 'Grace');
SELECT setval('customer_id_seq', 2);
