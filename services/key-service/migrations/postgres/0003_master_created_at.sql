-- When the current master version was made, for its yearly rotation reminder. Existing
-- keyrings: their creation for master version 1, else the last change of the row (a master
-- rotation, or a later escrow update: never earlier than the rotation).
ALTER TABLE keyring_meta ADD COLUMN master_created_at BIGINT NOT NULL DEFAULT 0;
UPDATE keyring_meta SET master_created_at = CASE WHEN master_version = 1 THEN created_at ELSE updated_at END;
