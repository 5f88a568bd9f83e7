-- The rewrap finds data keys wrapped under an older key version without scanning every
-- version, and counts them by version for its progress report.
CREATE INDEX secret_versions_by_key_version ON secret_versions (key_version);
