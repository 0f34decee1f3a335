from kamengsite.cli import main

main()
