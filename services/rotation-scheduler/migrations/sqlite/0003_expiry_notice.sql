-- Lead time of the notice before a covered secret's expire_time (7 days unless set).
ALTER TABLE rotation_policies ADD COLUMN expiry_notify_ms BIGINT NOT NULL DEFAULT 604800000;
