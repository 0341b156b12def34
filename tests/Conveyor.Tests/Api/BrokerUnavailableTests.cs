using Conveyor.Contracts;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Http;
using Microsoft.EntityFrameworkCore;
using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace Conveyor.Tests.Api;

[Collection(ConveyorCollection.Name)]
public sealed class BrokerUnavailableTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private RunningApp _api = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RabbitMq:Port"] = ClosedPort().ToString(CultureInfo.InvariantCulture),
            ["RabbitMq:ConnectTimeoutSeconds"] = "2",
        });
    }

    public async Task DisposeAsync() => await _api.DisposeAsync();

    [Fact]
    public async Task Submission_is_a_503_with_retry_after_and_leaves_no_job_row()
    {
        var paymentId = Guid.NewGuid();
        var key = $"order-{paymentId}";
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(15));

        using var response = await _api.Client.PostJobAsync(
            JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId), key, deadline.Token);

        await response.AssertProblemAsync(StatusCodes.Status503ServiceUnavailable);
        Assert.NotNull(response.Headers.RetryAfter);
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(0, await db.Jobs.CountAsync(j => j.BusinessKey == paymentId.ToString("D")));
        }

        // The key was released with the row: a retry is another 503, not a 422 or a phantom 202.
        using var retry = await _api.Client.PostJobAsync(
            JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId), key, deadline.Token);
        Assert.Equal(HttpStatusCode.ServiceUnavailable, retry.StatusCode);
    }

    /// <summary>A loopback port that was free a moment ago, so nothing answers on it.</summary>
    internal static int ClosedPort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }
}
