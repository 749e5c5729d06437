"""One module per CLI command: ``configure(parser)`` declares its flags (cheap), ``run(args)``
does the work (heavy imports go inside ``run``)."""
