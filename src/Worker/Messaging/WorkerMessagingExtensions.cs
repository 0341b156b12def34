using Conveyor.Contracts;
using Conveyor.Contracts.Payments;
using Conveyor.Contracts.Reports;
using Conveyor.Contracts.Webhooks;
using Conveyor.ServiceDefaults;
using Conveyor.Storage;
using Conveyor.Worker.Inbox;
using Conveyor.Worker.Jobs;
using Conveyor.Worker.Payments;
using Conveyor.Worker.Redelivery;
using Conveyor.Worker.Retention;
using Conveyor.Worker.Reports;
using Conveyor.Worker.Webhooks;
using MassTransit;
using Microsoft.AspNetCore.DataProtection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Options;

namespace Conveyor.Worker.Messaging;

public static class WorkerMessagingExtensions
{
    /// <summary>The consumers, their endpoints and the shared job pipeline.</summary>
    public static IServiceCollection AddWorkerMessaging(this IServiceCollection services, IConfiguration configuration)
    {
        var broker = services.AddRabbitMqOptions(configuration);
        foreach (var name in new[] { ChargePaymentConsumerDefinition.ConsumerName, DeliverWebhookConsumerDefinition.ConsumerName, GenerateReportConsumerDefinition.ConsumerName })
        {
            var endpoint = services.AddOptions<ConsumerEndpointOptions>(name);
            if (name == DeliverWebhookConsumerDefinition.ConsumerName)
            {
                // Before the configuration is bound, so that a setting still overrides it. One inbox transaction per
                // delivery: a batch commits when its slowest consumer ends, and a receiver answering at its timeout
                // held its batch, and with InboxConcurrentBatches of them every other receiver's webhooks (ADR 0004).
                endpoint.Configure(options =>
                {
                    options.KillSwitchCountsRemoteFailures = false;
                    options.InboxBatchSize = 1;
                });
            }

            endpoint
                .BindConfiguration($"{ConsumerEndpointOptions.SectionName}:{name}")
                .ValidateDataAnnotations()
                .ValidateOnStart();
        }

        // In-memory retries must end well within RabbitMQ's consumer_timeout; a report's run budget is only logged.
        services.AddSingleton<IValidateOptions<ConsumerEndpointOptions>, ConsumerTimeoutValidator>();
        services.AddHostedService<LongJobRunBudget>();

        services.AddSingleton(new JobDescriptor<ChargePayment>(JobKinds.ChargePayment, ChargePaymentConsumerDefinition.ConsumerName, m => m.PaymentId.ToString()));
        services.AddSingleton(new JobDescriptor<DeliverWebhook>(JobKinds.DeliverWebhook, DeliverWebhookConsumerDefinition.ConsumerName, m => m.WebhookId.ToString()));
        services.AddSingleton(new JobDescriptor<GenerateReport>(JobKinds.GenerateReport, GenerateReportConsumerDefinition.ConsumerName, m => m.ReportId.ToString()));
        services.AddSingleton<JobTracker>();
        services.AddSingleton<JobMetrics>();
        services.AddHostedService<JobCounterSeries>();
        services.AddSingleton<QueueModeProbe>();
        services.AddSingleton<InboxBatchers>();
        services.AddSingleton<RedeliveryStore>();
        // Seals the redelivery headers of stored copies; every worker shares the key ring through the database.
        services.AddDataProtection().SetApplicationName(RedeliverySeal.ApplicationName).PersistKeysToDbContext<ConveyorDbContext>();
        services.AddSingleton<RedeliverySeal>();
        services.AddSingleton<BrokerPublisher>();
        services.AddOptions<DispatcherOptions>().BindConfiguration(DispatcherOptions.SectionName).ValidateDataAnnotations().ValidateOnStart();
        services.AddHostedService<RedeliveryDispatcher>();
        services.AddSingleton<ScheduledBacklog>();
        services.AddHostedService(provider => provider.GetRequiredService<ScheduledBacklog>());
        // A failed reading (the database is down) is Degraded here: the database check already says Unhealthy.
        // Advisory: overdue messages leave the worker ready (200), see HealthExtensions.AdvisoryTag.
        services.AddHealthChecks().AddCheck<ScheduledBacklog>(
            ScheduledBacklog.HealthCheckName, HealthStatus.Degraded, [HealthExtensions.ReadyTag, HealthExtensions.AdvisoryTag]);
        services.AddOptions<RetentionOptions>().BindConfiguration(RetentionOptions.SectionName).ValidateDataAnnotations().ValidateOnStart();
        services.AddSingleton<RetentionSweeper>();
        services.AddHostedService(provider => provider.GetRequiredService<RetentionSweeper>());

        // Readiness follows "consuming": 503 once no receive endpoint consumes (broker out of reach), 200
        // while a kill switch pauses only some (Degraded, advisory). MassTransit's own check says Degraded
        // in both cases, so it is advisory here.
        services.AddHealthChecks().AddCheck<ConsumingHealthCheck>(
            ConsumingHealthCheck.Name, HealthStatus.Unhealthy, [HealthExtensions.ReadyTag, HealthExtensions.AdvisoryTag]);
        services.MarkBusHealthCheckAdvisory();
        services.AddMassTransit(bus =>
        {
            bus.WithoutUsageTelemetry();
            bus.AddConsumer<ChargePaymentConsumer, ChargePaymentConsumerDefinition>();
            bus.AddConsumer<DeliverWebhookConsumer, DeliverWebhookConsumerDefinition>();
            bus.AddConsumer<GenerateReportConsumer, GenerateReportConsumerDefinition>();
            bus.UsingRabbitMq((context, cfg) =>
            {
                cfg.UseConveyorBroker(broker, "conveyor-worker");
                if (broker.LazyQueues || broker.QuorumQueues)
                {
                    // The _error and _skipped queues copy their job queue's arguments, x-queue-type included:
                    // classic they stay (ADR 0002), lazy as configured; existing ones keep their type and mode.
                    var probe = context.GetRequiredService<QueueModeProbe>();
                    cfg.SendTopology.ConfigureErrorSettings = probe.ConfigureErrorQueue;
                    cfg.SendTopology.ConfigureDeadLetterSettings = probe.ConfigureErrorQueue;
                }
                cfg.ConfigureEndpoints(context, KebabCaseEndpointNameFormatter.Instance);
            });
        });
        services.AddBusStartGuard();
        return services;
    }

    /// <summary>The remote sides: payment gateway (or its simulation) and webhook receivers.</summary>
    public static IServiceCollection AddWorkerIntegrations(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddOptions<PaymentGatewayOptions>().BindConfiguration(PaymentGatewayOptions.SectionName).ValidateDataAnnotations().ValidateOnStart();
        services.AddOptions<WebhookOptions>().BindConfiguration(WebhookOptions.SectionName)
            .PostConfigure<IConfiguration>((options, configuration) => options.ReceiverSettings = WebhookReceiverOrigins.EntrySettings(configuration))
            .ValidateDataAnnotations().ValidateOnStart();
        services.AddSingleton<WebhookOriginSlots>();
        services.AddSingleton<WebhookOriginLeases>();
        services.AddOptions<ReportOptions>().BindConfiguration(ReportOptions.SectionName).ValidateDataAnnotations().ValidateOnStart();

        services.AddSingleton<RemoteIdempotencyKeys>();
        services.AddSingleton<WebhookSigningKeys>();
        var gateway = configuration.GetSection(PaymentGatewayOptions.SectionName).Get<PaymentGatewayOptions>() ?? new PaymentGatewayOptions();
        if (string.IsNullOrWhiteSpace(gateway.BaseUrl))
        {
            services.AddSingleton<IPaymentGateway, SimulatedPaymentGateway>();
        }
        else
        {
            services.AddHttpClient<IPaymentGateway, HttpPaymentGateway>(http =>
            {
                http.BaseAddress = new Uri(gateway.BaseUrl.Trim().TrimEnd('/') + "/");
                http.Timeout = TimeSpan.FromSeconds(gateway.TimeoutSeconds);
                if (!string.IsNullOrEmpty(gateway.ApiKey))
                {
                    http.DefaultRequestHeaders.Authorization = new("Bearer", gateway.ApiKey);
                }
            })
                // A redirect is the gateway's answer, not a place to send the charge: followed, a 307 or 308 took
                // its body and Idempotency-Key to the Location's host without the API key, a 301 or 302 became a GET.
                .ConfigurePrimaryHttpMessageHandler(() => new SocketsHttpHandler { AllowAutoRedirect = false });
        }

        var webhooks = configuration.GetSection(WebhookOptions.SectionName).Get<WebhookOptions>() ?? new WebhookOptions();
        services.AddHttpClient<WebhookSender>(http => http.Timeout = TimeSpan.FromSeconds(webhooks.TimeoutSeconds))
            .ConfigurePrimaryHttpMessageHandler(() => WebhookDestinations.Handler(webhooks.AllowPrivateNetworks));
        return services;
    }
}
