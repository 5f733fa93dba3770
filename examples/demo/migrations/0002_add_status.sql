ALTER TABLE orders ADD COLUMN status TEXT NOT NULL DEFAULT 'open';
CREATE INDEX orders_by_status ON orders (status);
