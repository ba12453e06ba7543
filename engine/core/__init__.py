"""What every step of the engine stands on: errors, the config schema, registries, the stage
contract, the Ray session, file writing and row status."""
