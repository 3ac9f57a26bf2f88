"""Test and benchmark support that does not depend on pytest (see ``cluster``)."""
