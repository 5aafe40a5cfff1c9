"""Prefect flows: thin wrappers whose tasks call the plain functions of pipeline/, features/ and training/."""
