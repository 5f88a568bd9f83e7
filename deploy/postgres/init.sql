-- One database per service (DESIGN: services never share tables).
CREATE DATABASE sentia_keys;
CREATE DATABASE sentia_vault;
CREATE DATABASE sentia_audit;
CREATE DATABASE sentia_rotation;
