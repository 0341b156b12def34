using Npgsql;
using Testcontainers.PostgreSql;
using Testcontainers.RabbitMq;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// Where the servers are: from the environment (what <c>scripts/services.sh env</c> prints) when
/// it names them, else from Testcontainers on machines with a Docker engine.
/// </summary>
public sealed record ServerSettings(
    string PostgresConnectionString,
    string RabbitHost,
    int RabbitPort,
    int RabbitManagementPort,
    string RabbitUser,
    string RabbitPassword) : IAsyncDisposable
{
    private IAsyncDisposable[] _containers = [];

    public static async Task<ServerSettings> ResolveAsync()
    {
        var connectionString = Environment.GetEnvironmentVariable("ConnectionStrings__Conveyor");
        var rabbitHost = Environment.GetEnvironmentVariable("RabbitMq__Host");
        if (!string.IsNullOrEmpty(connectionString) && !string.IsNullOrEmpty(rabbitHost))
        {
            return new ServerSettings(
                connectionString,
                rabbitHost,
                int.Parse(Environment.GetEnvironmentVariable("RabbitMq__Port") ?? "5672", System.Globalization.CultureInfo.InvariantCulture),
                int.Parse(Environment.GetEnvironmentVariable("RabbitMq__ManagementPort") ?? "15672", System.Globalization.CultureInfo.InvariantCulture),
                Environment.GetEnvironmentVariable("RabbitMq__Username") ?? "guest",
                Environment.GetEnvironmentVariable("RabbitMq__Password") ?? "guest");
        }

        return await StartContainersAsync();
    }

    private static async Task<ServerSettings> StartContainersAsync()
    {
        var postgres = new PostgreSqlBuilder("postgres:15").Build();
        var rabbit = new RabbitMqBuilder("rabbitmq:3.13-management").WithPortBinding(15672, true).Build();
        try
        {
            await Task.WhenAll(postgres.StartAsync(), rabbit.StartAsync());
        }
        catch (Exception exception)
        {
            throw new InvalidOperationException(
                "No servers: set ConnectionStrings__Conveyor and RabbitMq__* (eval \"$(scripts/services.sh up)\") or run where Docker is available.",
                exception);
        }

        var amqp = new Uri(rabbit.GetConnectionString());
        var credentials = amqp.UserInfo.Split(':');
        return new ServerSettings(
            new NpgsqlConnectionStringBuilder(postgres.GetConnectionString()).ConnectionString,
            amqp.Host,
            amqp.Port,
            rabbit.GetMappedPublicPort(15672),
            Uri.UnescapeDataString(credentials[0]),
            Uri.UnescapeDataString(credentials[1]))
        {
            _containers = [postgres, rabbit],
        };
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var container in _containers)
        {
            await container.DisposeAsync();
        }
    }
}
