-- Listing pages through paths in byte order (COLLATE "C", the same order SQLite uses); the
-- primary key's index is in the database's collation and cannot serve it, so without this
-- every page was a sequential scan and a sort of the whole prefix.
CREATE INDEX secrets_path_bytewise ON secrets (path COLLATE "C");
