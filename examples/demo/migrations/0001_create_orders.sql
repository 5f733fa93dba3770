CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    customer TEXT NOT NULL,
    amount_cents INTEGER NOT NULL
);
INSERT INTO orders (customer, amount_cents) VALUES ('acme', 1250), ('globex', 990);
