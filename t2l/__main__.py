from t2l.cli import main

main()
