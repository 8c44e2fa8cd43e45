from oomguard.cli.main import main

main()
