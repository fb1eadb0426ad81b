from halo_data.service import DataService

if __name__ == "__main__":
    DataService.main()
