"""`python -m pneumonia.batch`, `pneumonia.serving.batch`:
scores a folder or an s3:// prefix through the endpoint's code path."""

from pneumonia.serving.batch import main

if __name__ == "__main__":
    main()
