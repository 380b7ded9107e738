from cortexd.replica.main import main

main()
