//! Worker lifecycle: pure state machine, spawning, and the event loop that drives them.
