-- Measured engine speeds, for ETAs: seconds of engine time per second of output video at 512x512
-- pixels and 25 inference steps, an exponential moving average over finished jobs, per engine and
-- instance ('' = the engine as a whole).
CREATE TABLE engine_speeds (
    engine              TEXT NOT NULL,
    instance            TEXT NOT NULL,
    seconds_per_second  DOUBLE PRECISION NOT NULL,
    samples             BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    PRIMARY KEY (engine, instance)
);
