from cortexd.cli import main

main()
