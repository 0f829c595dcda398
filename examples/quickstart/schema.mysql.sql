CREATE TABLE customer (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100) NOT NULL UNIQUE) ENGINE=InnoDB;
CREATE TABLE purchase (
    id INT AUTO_INCREMENT PRIMARY KEY,
    customer_id INT NOT NULL,
    amount INT NOT NULL,
    FOREIGN KEY (customer_id) REFERENCES customer (id)
) ENGINE=InnoDB;
CREATE VIEW customer_total AS
    SELECT c.name, COALESCE(SUM(p.amount), 0) AS total
    FROM customer c LEFT JOIN purchase p ON p.customer_id = c.id
    GROUP BY c.name;
INSERT INTO customer (id, name) VALUES (1, 'Ada'), (2, 'Grace');
