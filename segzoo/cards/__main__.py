from segzoo.cards.cli import main

main()
