-- The master key escrowed to an offline recovery public key (ECIES), for the lost-master-key
-- disaster recovery procedure, and which recovery key it was made for.
ALTER TABLE keyring_meta ADD COLUMN recovery_escrow BYTEA;
ALTER TABLE keyring_meta ADD COLUMN recovery_fingerprint TEXT;
