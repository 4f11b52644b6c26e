-- The service's own resource in place of the template's example.
DROP TABLE items;
CREATE TABLE notes (
    id          uuid PRIMARY KEY,
    text        text NOT NULL CHECK (char_length(text) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);
