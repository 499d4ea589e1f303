"""The planner: which weights train for a board's memory, the backward plan and the arena."""
