"""Teachers: trained by kdbench (each once per dataset/architecture/recipe/seed, as the
``vanilla`` run of the teacher architecture), or supplied as checkpoint files; cached in
memory per process and listed by the catalogue. Architectures live in ``students/``
(one module per family serves both roles)."""
