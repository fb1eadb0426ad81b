from halo_gateway.service import Gateway

if __name__ == "__main__":
    Gateway.main()
