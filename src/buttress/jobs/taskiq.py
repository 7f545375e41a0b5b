"""The taskiq adapter of `buttress.jobs` (see `buttress.jobs._taskiq` and docs/jobs.md)."""

from buttress.jobs._taskiq import HandedBack, TaskiqJobs, replay_record

__all__ = ["HandedBack", "TaskiqJobs", "replay_record"]
